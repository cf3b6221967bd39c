"""Quality of rep_grad with rep_reduce="sample" vs "batch" on a built-in dataset.

HPS with `rep_grad=True` (task gradients at the shared representation), each gradient
method once per mode, on the dataset's preset from `mtlkit.experiments.suite` (last-epoch
model, test split), over a few seeds, with the single-task baselines for Δm. Prints the
suite's table: each task's metric (mean ± std over seeds), Δm % and seconds per epoch.

Run: python benchmarks/rep_reduce_quality.py [--dataset penguins] [--seeds 0 1 2] [--methods mgda upgrad imtl_g] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import time

import torch

from mtlkit.experiments.suite import Variant, run_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="penguins")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["mgda", "upgrad", "imtl_g"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the preset's epochs")
    args = parser.parse_args()
    variants = [Variant(label="ew", weighting="ew")]
    variants += [
        Variant(label=f"{name} {mode}", weighting={"name": name, "rep_reduce": mode}, rep_grad=True)
        for name in args.methods
        for mode in ("sample", "batch")
    ]
    result = run_suite(args.dataset, variants, seeds=args.seeds, scale=args.scale)
    print(
        f"{args.dataset}, HPS, rep_grad=True, seeds {args.seeds}, scale {args.scale}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    print(result.table())


if __name__ == "__main__":
    main()

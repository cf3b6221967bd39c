"""The `mtlkit` command: demo, train, eval, graph, bench, list."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from mtlkit.graph.executor import NodeError

# What a user can cause and fix: each is one line on stderr and exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, SpecError, CheckpointError, and the ValueErrors that name a task, label or split
    ImportError,  # a missing extra (MissingExtraError) or factory module
    NodeError,  # a graph node failed on its input (shapes, types)
    FloatingPointError,  # a non-finite loss under nonfinite_loss='raise'
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (2 for a user error)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides += extra  # key=value overrides written after an option (--run-dir R trainer.n_epochs=5)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    prefix = f"mtlkit {args.command}"
    if args.debug:
        return args.handler(args)  # every error with its traceback
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, category, *_args, **_kw: print(
            f"{prefix}: warning: {message}", file=sys.stderr
        )
        try:
            return args.handler(args)
        except USER_ERRORS as err:
            print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # a bug, not the user's mistake: still no traceback unless asked for
            print(
                f"{prefix}: unexpected {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)",
                file=sys.stderr,
            )
            return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def default_run_dir(name: str) -> Path:
    """`runs/<name>-<time>`; under torchrun `runs/<name>-<run id>`, which every rank shares (a clock is not)."""
    from mtlkit.experiments.runner import launched_by_torchrun

    suffix = os.environ["TORCHELASTIC_RUN_ID"] if launched_by_torchrun() else time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{suffix}"


def _demo(args: argparse.Namespace) -> int:
    from mtlkit.experiments.suite import demo_variants, run_suite

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"mtlkit demo: {args.dataset}, single-task baselines and 2 architectures x 4 balancers, one seed (0)")
    result = run_suite(args.dataset, demo_variants(), seeds=[0], scale=args.scale, out_dir=out)
    _write_table(f"{result.table()}\n\n{result.legend()}", out, f"Demo on {args.dataset} (one seed)")
    print(f"run folders (config, logs, checkpoints, graph.png, curves.png): {out}/<variant>-seed0")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mtlkit.experiments import load_config, run
    from mtlkit.experiments.report import scores_table
    from mtlkit.training import is_main_process

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config.name)
    result = run(config, run_dir, progress_bar=not args.no_progress, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        print(scores_table(result.scores))
        print(f"\nrun folder: {run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mtlkit.experiments import evaluate
    from mtlkit.experiments.report import scores_table

    print(scores_table(evaluate(args.run_dir, tuple(args.splits))))
    return 0


def _graph(args: argparse.Namespace) -> int:
    from mtlkit.experiments import load_config
    from mtlkit.experiments.build import build_model, load_data, model_graph, select_tasks
    from mtlkit.viz import draw_graph

    config = load_config(args.config, args.overrides)
    loaded = load_data(config)
    model = build_model(config, loaded.info, select_tasks(loaded.info, config.data))
    draw_graph(model_graph(model), args.out)
    print(f"wrote {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mtlkit.experiments import suite
    from mtlkit.weighting.wrappers import split_specs

    names: Sequence[str]
    if args.name == "balancers":
        names = split_specs(args.methods) if args.methods else suite.DEFAULT_BALANCERS
        variants = suite.balancer_variants(names, architecture=args.architecture)
    else:
        names = args.architectures.split(",") if args.architectures else suite.DEFAULT_ARCHITECTURES
        variants = suite.architecture_variants(names)
    scale = args.scale * (5 if args.full else 1)
    out = Path(args.out) if args.out else None
    result = suite.run_suite(args.dataset, variants, seeds=range(args.seeds), scale=scale, out_dir=out)
    title = f"`mtlkit bench {args.name} --dataset {args.dataset}` ({args.seeds} seeds, epochs x{scale:g})"
    _write_table(f"{result.table()}\n\n{result.legend()}", out, title)
    return 0


def _list(args: argparse.Namespace) -> int:
    from mtlkit.data.datasets import available as datasets
    from mtlkit.experiments.config import ARCHITECTURES
    from mtlkit.metrics import METRICS
    from mtlkit.weighting import available as balancers
    from mtlkit.weighting.wrappers import WRAPPERS

    print("architectures:", ", ".join(ARCHITECTURES))
    print("balancers:    ", ", ".join(balancers()))
    print("wrappers:     ", "; ".join(WRAPPERS.values()), "(e.g. weighting=mgda@every=4,ema=0.9)")
    print("datasets:     ", ", ".join(datasets()))
    print("metrics:      ", ", ".join(METRICS))
    return 0


def _write_table(table: str, out: Path | None, title: str) -> None:
    print(f"\n{title}\n\n{table}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(f"# {title}\n\n{table}\n")
        print(f"\nresults: {out / 'results.md'}")


def _parser() -> argparse.ArgumentParser:
    from mtlkit.data.datasets import available as datasets

    parser = argparse.ArgumentParser(prog="mtlkit", description="Multi-task learning for PyTorch.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(commands.add_parser, parents=[common])

    demo = add("demo", help="the main job: architectures x balancers on a built-in dataset")
    demo.add_argument("--dataset", default="digits", choices=datasets())
    demo.add_argument("--out", help="folder for results.md (default runs/demo-<time>)")
    demo.add_argument("--scale", type=float, default=1.0, help="multiply the number of epochs")
    demo.set_defaults(handler=_demo)

    train = add(
        "train",
        help="train one run from a YAML config",
        description="Train one run from a YAML config: built-in data, your own table file (CSV, Parquet, .npz) "
        "or a Python factory. Every key of the config, with its default and examples: docs/config.md "
        "in the mtlkit source tree.",
    )
    train.add_argument("config", help="the YAML config (schema: docs/config.md)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.n_epochs=5 weighting=uw")
    train.add_argument("--run-dir", help="run folder (default runs/<name>-<time>, under torchrun runs/<name>-<run id>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    existing = train.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from checkpoints/last.pt"
    )
    existing.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    train.set_defaults(handler=_train)

    evaluate = add("eval", help="score a saved run folder")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    evaluate.set_defaults(handler=_eval)

    graph = add("graph", help="draw the task graph of a config")
    graph.add_argument("config")
    graph.add_argument("overrides", nargs="*", metavar="key=value")
    graph.add_argument("--out", default="graph.png")
    graph.set_defaults(handler=_graph)

    bench = add("bench", help="compare balancers or architectures (mean ± std over seeds, Δm)")
    bench.add_argument("name", choices=["balancers", "architectures"])
    bench.add_argument("--dataset", default="digits", choices=datasets())
    bench.add_argument("--seeds", type=int, default=3)
    bench.add_argument("--methods", help="comma-separated balancer names (balancers), e.g. ew,mgda@every=4,ema=0.9")
    bench.add_argument("--architectures", help="comma-separated architecture names (architectures)")
    bench.add_argument("--architecture", default="hps", help="the architecture the balancers train (balancers)")
    bench.add_argument("--scale", type=float, default=1.0, help="multiply the number of epochs")
    bench.add_argument("--full", action="store_true", help="the full size: 5x the epochs")
    bench.add_argument("--out", help="folder for results.md and each run's folder")
    bench.set_defaults(handler=_bench)

    listing = add("list", help="architectures, balancers, datasets and metrics")
    listing.set_defaults(handler=_list)
    return parser

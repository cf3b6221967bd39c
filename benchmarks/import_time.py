"""Time of `import mtlkit` on top of `import torch`, each in a fresh interpreter.

Each run starts a new Python process that imports torch, then mtlkit, and reports both
times (wall clock); the table gives the median and range over `--runs` processes. The
issue's goal: `import mtlkit` costs at most 0.2 s more than `import torch` alone.

Run: python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

_CHILD = """
import json, time
start = time.perf_counter()
import torch
middle = time.perf_counter()
import mtlkit
end = time.perf_counter()
print(json.dumps({"torch": middle - start, "mtlkit": end - middle}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=300)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC, {args.runs} fresh processes, wall clock\n")
    print("| import | median (s) | min–max (s) |")
    print("|---|---:|---:|")
    for key, label in (("torch", "`import torch`"), ("mtlkit", "`import mtlkit` after it")):
        values = [run[key] for run in runs]
        print(f"| {label} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |")


if __name__ == "__main__":
    main()

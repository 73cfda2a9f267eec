"""Seconds per training iteration of a preset on the CPU with 1 or more local processes (data
parallel over gloo, each process one thread and its share of every batch).

    python benchmarks/cpu_processes.py                          # fmnist, 1 and 2 processes
    python benchmarks/cpu_processes.py --processes 1 2 4 --steps 400 --rounds 3
    python benchmarks/cpu_processes.py --preset fmnist -- train.compile=false

A small model's matmuls do not get faster with a second thread (the fmnist preset trains on one),
but a second process that takes half of each batch can: the global batch, and so the maths, stay
the same. Each run is a real `gatgan train ... train.processes=N` of the preset for `--steps`
iterations in a fresh folder, without the monitors, evaluations and sample grids (rank 0 runs those alone, so they do
not scale and would blur the step time). Runs alternate between the process counts round by round,
so that a drift in the machine's speed reaches each count alike. Reported: the mean seconds per
iteration after the first logging window (which holds the compilation) and the ratio to the first
count. Quote the machine with the numbers, and run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOG_EVERY = 50
QUIET = ["eval.every=0", "train.align_every=0", "train.diagnose_every=0", f"train.log_every={LOG_EVERY}"]


def seconds_per_step(stats: Path) -> float:
    """Mean seconds per iteration over the logging windows after the first, weighted by their steps."""
    windows = [json.loads(line) for line in stats.read_text().splitlines() if '"sec_per_step"' in line]
    later = windows[1:]
    if not later:
        raise SystemExit(f"{stats}: fewer than two logging windows; raise --steps above {2 * LOG_EVERY}")
    return statistics.fmean(window["sec_per_step"] for window in later)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fmnist")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300, help="iterations per run (a multiple of 50)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per process count, alternating")
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for every run (after --)")
    args = parser.parse_args()
    from gatgan.train.config import load_config

    config = load_config(args.preset, args.overrides)
    # one process with the threads the preset asks for, set before torch starts (train.processes sets
    # it for its ranks): without it one process measured 0.352 s per fmnist iteration, with it 0.258
    environ = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads or 1)}
    kimg = args.steps * config.train.global_batch / 1000
    seconds: dict[int, list[float]] = {n: [] for n in args.processes}
    with tempfile.TemporaryDirectory(prefix="gatgan-processes-") as tmp:
        for round_ in range(args.rounds):
            for n in args.processes:
                name = f"p{n}-r{round_}"
                settings = ["-c", args.preset, f"run.dir={tmp}", f"run.name={name}", f"train.kimg={kimg}",
                            f"train.sample_every={args.steps}", f"train.checkpoint_every={args.steps}", *QUIET,
                            *args.overrides, f"train.processes={n}"]
                done = subprocess.run([sys.executable, "-m", "gatgan.cli", "train", *settings], capture_output=True,
                                      text=True, env=environ)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                seconds[n].append(seconds_per_step(Path(tmp) / name / "stats.jsonl"))
                print(f"round {round_ + 1}, {n} process(es): {seconds[n][-1]:.3f} s/iteration", flush=True)
    reference = statistics.fmean(seconds[args.processes[0]])
    print(f"\n{args.preset}, global batch {config.train.global_batch}, {args.steps} iterations per run, "
          f"{args.rounds} alternating rounds\n")
    print("| processes | batch per process | s/iteration (mean of rounds) | images/s | vs first |\n" + "|---" * 5 + "|")
    for n, times in seconds.items():
        mean = statistics.fmean(times)
        print(f"| {n} | {config.train.global_batch // n} | {mean:.3f} | {config.train.global_batch / mean:.0f} | "
              f"{mean / reference:.2f}x |")


if __name__ == "__main__":
    main()

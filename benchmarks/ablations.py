"""The paper's ablations (REFERENCE §4) at the embedded scale, and their report.

    python benchmarks/ablations.py train            # every arm, two at a time, one thread each
    python benchmarks/ablations.py report           # scores, analyses, plots -> reports/ablations/

Each arm is a preset under configs/ablations/ that changes one thing from `ablations/baseline`
(the `fmnist` preset), so every arm has the same data, budget and seed. Re-running `train` resumes
unfinished arms and skips finished ones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("baseline", "mng-linear", "mng-off", "msg", "repa-off",
        "lr-small", "lr-small-at-wide-lr", "lr-wide-at-small-lr")


def train_arms(arms: list[str], runs_dir: Path, jobs: int, extra: list[str]) -> None:
    """Runs `gatgan train` per arm, `jobs` at a time, each pinned to one thread (measured: the
    small models run no faster on two, and two jobs on two threads each thrash)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(arms), {}
    while pending or running:
        while pending and len(running) < jobs:
            arm = pending.pop(0)
            log = open(runs_dir / f"{arm}.log", "a")
            command = [sys.executable, "-m", "gatgan.cli", "train", "-c", f"ablations/{arm}",
                       f"run.dir={runs_dir}", "train.threads=1", *extra]
            running[arm] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time())
            print(f"started {arm}: {' '.join(command[2:])}", flush=True)
        time.sleep(2)
        for arm, (process, log, start) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[arm]
                status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {log.name})"
                print(f"{arm}: {status} in {(time.time() - start) / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train every arm (resumes unfinished ones)")
    train.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    train.add_argument("--runs-dir", type=Path, default=Path("runs/ablations"))
    train.add_argument("--jobs", type=int, default=2, help="arms trained at once")
    train.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm")
    args = parser.parse_args()
    if args.command == "train":
        train_arms(args.arms, args.runs_dir, args.jobs, args.overrides)


if __name__ == "__main__":
    main()

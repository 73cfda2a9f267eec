"""Why the embedded default's samples are accurate but not diverse, and what fixes it.

    python benchmarks/quality.py train --arms baseline mapping-lr1 ...   # two at a time, one thread each
    python benchmarks/quality.py report                                   # -> reports/quality/

Each arm is the `fmnist` preset with one change (given as `key=value` overrides below), trained
for the same number of images with the in-training metric (FD, precision, recall on 2,000 samples)
every 250 iterations, so the arms can be compared at equal images and, through each arm's step
time measured alone (`time`), at equal wall clock. Re-running `train` resumes unfinished arms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import run_jobs  # noqa: E402  (a sibling script)

SCREEN = ["train.kimg=32", "eval.every=250", "train.checkpoint_every=250", "train.keep_checkpoints=0"]
# arm -> (what it changes, overrides of the `fmnist` preset)
ARMS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the fmnist preset", []),
    "mapping-lr1": ("mapping network at the full lr (lr_mult 1 instead of 0.01)", ["model.mapping_lr_mult=1.0"]),
    "lr2x": ("2x base lr for G and D", ["optim.base_lr=4e-4"]),
    "mng-off": ("no MNG (final exit only)", ["loss.mng.num_levels=1"]),
    "patch1": ("patch 1 (64 tokens) for G and D", ["model.generator=GAT-Micro/1", "model.discriminator=GAT-Micro/1"]),
    "gamma1": ("R1/R2 weight 1 instead of 0.1", ["loss.penalty.gamma_r1=1.0", "loss.penalty.gamma_r2=1.0"]),
    "ema-ramp": ("StyleGAN2 EMA: half-life 10 kimg, ramp-up 0.05", ["optim.ema_kimg=10", "optim.ema_rampup=0.05"]),
    "batch64": ("batch 64 (half the steps at equal images)", ["train.global_batch=64"]),
    "beta2-999": ("Adam beta2 0.999", ["optim.beta2=0.999"]),
    "translate": ("DiffAugment translation + flip", ["loss.augment.policy=translation,flip"]),
}


def commands(arms: list[str], runs_dir: Path, extra: list[str]) -> dict[str, list[str]]:
    return {arm: ["-c", "fmnist", f"run.dir={runs_dir}", f"run.name={arm}", *SCREEN, *ARMS[arm][1], *extra]
            for arm in arms}


def curve(run: Path) -> list[dict]:
    """The in-training metric of a run, one record per evaluation."""
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "eval/fd" in r]


def idle_seconds_per_step(arm: str, steps: int, extra: list[str]) -> float:
    """Seconds per training iteration of an arm, measured alone on one thread after 3 warm-up
    steps (run this on an otherwise idle machine: arms trained two at a time slow each other)."""
    import tempfile

    import torch

    from gatgan.train.config import load_config
    from gatgan.train.trainer import Trainer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("fmnist", [f"run.dir={tmp}", "run.name=timing", *ARMS[arm][1], *extra])
        trainer = Trainer(config, progress=False)
        for _ in range(3):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        seconds = (time.perf_counter() - start) / steps
        trainer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands_ = parser.add_subparsers(dest="command", required=True)
    train = commands_.add_parser("train", help="train arms (resumes unfinished ones)")
    train.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    train.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    train.add_argument("--jobs", type=int, default=2)
    train.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm (e.g. train.seed=1)")
    timing = commands_.add_parser("time", help="idle seconds per iteration of each arm -> <runs-dir>/timing.json")
    timing.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    timing.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    timing.add_argument("--steps", type=int, default=20)
    show = commands_.add_parser("show", help="print each arm's in-training metric")
    show.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    if args.command == "train":
        run_jobs(commands(args.arms, args.runs_dir, args.overrides), args.runs_dir, args.jobs)
    elif args.command == "time":
        path = args.runs_dir / "timing.json"
        timing = json.loads(path.read_text()) if path.is_file() else {}
        for arm in args.arms:
            timing[arm] = idle_seconds_per_step(arm, args.steps, [])
            print(f"{arm:<14} {timing[arm]:.3f} s/it", flush=True)
            args.runs_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(timing, indent=2))
    else:
        for run in sorted(p for p in args.runs_dir.iterdir() if (p / "stats.jsonl").is_file()):
            points = " ".join(f"{r['step']}:{r['eval/fd']:.0f}/{r.get('eval/recall', 0):.3f}" for r in curve(run))
            print(f"{run.name:<14} {points}")


if __name__ == "__main__":
    main()

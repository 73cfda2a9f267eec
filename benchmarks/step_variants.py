"""Seconds per training iteration of step variants that keep the maths, timed side by side.

    python benchmarks/step_variants.py                       # GAT-S/2, 32x32x4 latents, batch 4, CPU
    python benchmarks/step_variants.py --model GAT-B/2 --batch 64 --device cuda --precision bf16
    python benchmarks/step_variants.py --model GAT-Micro/2 --latent-size 8 --batch 32 --rounds 40  # fmnist's shapes

Every variant is a Trainer on the same synthetic data in one process; their iterations are
interleaved round by round (after one untimed warm-up each), so a machine whose speed drifts, or
that is shared, slows every variant alike. Reported: the seconds of the first iteration (which
compiles, for the compiled variants: a cold inductor cache costs more than a warm one), the mean seconds
per iteration and the ratio to the reference (two generator passes, R1/R2 on every D step, no compile).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import interleaved, make_data  # noqa: E402  (a sibling script)

# variant -> (what it changes, overrides); the first is the reference
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "two-passes": ("G forward in the D step and again in the G step (the authors' order, the default)", []),
    "one-pass": ("one G forward per iteration, its output detached for the D step",
                 ["train.single_generator_pass=true"]),
    "one-pass+lazy4": ("and R1/R2 on one D step in 4, weighted 4x (loss.penalty.every=4; changes the "
                       "optimisation, as the authors' R1_every)",
                       ["train.single_generator_pass=true", "loss.penalty.every=4"]),
    "compile": ("every transformer block compiled (train.compile; its first iteration pays the compilation)",
                ["train.compile=true"]),
    "compile+one-pass": ("compiled blocks and one G forward per iteration (the fmnist preset's step)",
                         ["train.compile=true", "train.single_generator_pass=true"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GAT-S/2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--latent-size", type=int, default=32, help="latent height and width (4 channels)")
    parser.add_argument("--rounds", type=int, default=3, help="timed iterations per variant")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gatgan.train.config import load_config
    from gatgan.train.distributed import shutdown_distributed
    from gatgan.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="gatgan-variants-"))
    try:
        data = make_data(tmp, (4, args.latent_size), 1000)
        common = [f"data.path={data}", f"run.dir={tmp / 'runs'}", f"model.generator={args.model}",
                  f"model.discriminator={args.model}", f"train.global_batch={args.batch}", "train.kimg=1000",
                  f"train.device={args.device}", f"train.precision={args.precision}", f"train.threads={args.threads}"]
        trainers = {name: Trainer(load_config(None, [*common, f"run.name={name.replace('+', '-')}", *overrides]),
                                  progress=False) for name, (_, overrides) in VARIANTS.items() if name in args.variants}
        first, seconds = interleaved(trainers, args.rounds)
        for trainer in trainers.values():
            trainer.close()
        shutdown_distributed()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the mean, not the median: with a lazy penalty one iteration in `every` is the dear one
    reference = statistics.mean(seconds[next(iter(seconds))])
    print(f"{args.model}, {args.latent_size}x{args.latent_size}x4 latents, batch {args.batch}, {args.device} "
          f"{args.precision}, {args.threads} thread(s), {args.rounds} interleaved iterations per variant (mean)\n")
    print("| variant | what changes | first iteration, s | s/iteration | vs first |\n|---|---|---|---|---|")
    for name, times in seconds.items():
        mean = statistics.mean(times)
        print(f"| {name} | {VARIANTS[name][0]} | {first[name]:.1f} | {mean:.3f} | {mean / reference:.2f}x |")


if __name__ == "__main__":
    main()

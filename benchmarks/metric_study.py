"""How harsh is the embedded metric's recall? Recall at several k, on L2-normalised features, and
coverage, for the real-vs-real floor, the tokenizer ceiling and trained runs, all in the domain
classifier's features (reports/quality/FINDINGS.md §1b).

    python benchmarks/metric_study.py runs/quality/baseline-full runs/quality/after-full ...

Each run's EMA generator (and, with --raw, its raw generator) draws --num class-balanced samples at
truncation 1 (seeds 0..num-1, as `gatgan eval`); the floor is the held-out test split and the
ceiling its round trip through the first run's tokenizer; every set is compared with the same
--num reference images of the training split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

NEIGHBOURS = (3, 5, 10)


def scores(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    from gatgan.eval.metrics import density_coverage, precision_recall

    row = {f"recall k={k}": precision_recall(real, fake, k=k)[1] for k in NEIGHBOURS}

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    row["recall k=3, L2-normalised"] = precision_recall(unit(real), unit(fake), k=3)[1]
    row["coverage k=5"] = density_coverage(real, fake, k=5)[1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--raw", action="store_true", help="also the raw (non-EMA) generators")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from gatgan.data.latents import LatentDataset
    from gatgan.eval.suite import domain_metric, held_out_split, nhwc_to_nchw, round_trip
    from gatgan.sample import Sampler, class_balanced_labels

    first = Sampler.from_run(args.runs[0])
    data_path = json.loads((args.runs[0] / "data.json").read_text())["path"]
    metric = domain_metric(data_path, progress=False)
    real = metric.reference.features[:args.num]  # the reference subset `gatgan eval` compares with
    test_images = held_out_split(LatentDataset(data_path))[2]
    sets = {"floor (test split)": test_images[:args.num],
            "tokenizer ceiling": round_trip(first.tokenizer, test_images[:args.num], "cpu")}
    labels = class_balanced_labels(args.num, len(first.class_names))
    for run in args.runs:
        for ema in (True, False) if args.raw else (True,):
            sampler = Sampler.from_run(run, ema=ema)
            images = sampler.images(list(range(args.num)), labels, 1.0)
            sets[f"{run.name}{'' if ema else ' (raw G)'}"] = nhwc_to_nchw(images)
    rows = {name: scores(real, metric.embed(images)[0]) for name, images in sets.items()}
    columns = list(next(iter(rows.values())))
    print(f"{args.num} samples per set, domain classifier features of {data_path}\n")
    print("| set | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()

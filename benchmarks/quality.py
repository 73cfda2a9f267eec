"""Why the embedded default's samples are accurate but not diverse, and what fixes it.

    python benchmarks/quality.py train --arms baseline mng-off ...   # two at a time, one thread each
    python benchmarks/quality.py train --full --seed 1 --arms after  # the preset's whole budget
    python benchmarks/quality.py time                                # step time of every arm
    # the longer budget: a copy of the `after` run, resumed (its run.name renamed in config.yaml)
    cp -r runs/quality/after-full runs/quality/after-long
    sed -i 's/name: after-full/name: after-long/' runs/quality/after-long/config.yaml
    gatgan train -c runs/quality/after-long/config.yaml train.kimg=192
    python benchmarks/quality.py report                              # -> reports/quality/

Each arm is the `fmnist` preset as it was before this study with one change (the `key=value`
overrides below), trained for the same number of images with the in-training metric (FD,
precision, recall on 2,000 samples) every 250 iterations, so the arms can be compared at equal
images and, through each arm's step time (`time`: all arms interleaved in one process on one
thread), at equal wall clock. Re-running `train` resumes unfinished arms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import _commit, last_record, run_jobs, trained_at  # noqa: E402  (a sibling script)
from train_throughput import interleaved  # noqa: E402

SCREEN = ["train.kimg=32", "eval.every=250", "train.checkpoint_every=250", "train.keep_checkpoints=0"]
# The `fmnist` preset as it was before this study (commit 20c6f4f): every arm starts from it, so the
# arms stay what they were after the preset changed.
BEFORE = ["loss.mng.num_levels=4", "optim.base_lr=2e-4", "optim.ema_kimg=0", "optim.ema_rampup=0",
          "optim.lr_decay=none", "loss.penalty.every=1", "train.kimg=72", "train.compile=false",
          "train.single_generator_pass=false", "train.global_batch=32", "train.processes=1"]
# arm -> (what it changes, overrides of BEFORE)
ARMS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the fmnist preset before this study", []),
    "mapping-lr1": ("mapping network at the full lr (lr_mult 1 instead of 0.01)", ["model.mapping_lr_mult=1.0"]),
    "lr2x": ("2x base lr for G and D", ["optim.base_lr=4e-4"]),
    "mng-off": ("no MNG (final exit only)", ["loss.mng.num_levels=1"]),
    "patch1": ("patch 1 (64 tokens) for G and D", ["model.generator=GAT-Micro/1", "model.discriminator=GAT-Micro/1"]),
    "gamma1": ("R1/R2 weight 1 instead of 0.1", ["loss.penalty.gamma_r1=1.0", "loss.penalty.gamma_r2=1.0"]),
    "ema-ramp": ("StyleGAN2 EMA: half-life 10 kimg, ramp-up 0.05", ["optim.ema_kimg=10", "optim.ema_rampup=0.05"]),
    "batch64": ("batch 64 (half the steps at equal images)", ["train.global_batch=64"]),
    "beta2-999": ("Adam beta2 0.999", ["optim.beta2=0.999"]),
    "translate": ("DiffAugment translation + flip", ["loss.augment.policy=translation,flip"]),
    "lazy4": ("R1/R2 on one D step in 4, weighted 4x (faster steps)", ["loss.penalty.every=4"]),
}
# Second round: each first-round change again, on top of the best first-round arm (no MNG).
ARMS |= {f"mng-off+{arm}": (f"no MNG, {ARMS[arm][0]}", [*ARMS["mng-off"][1], *ARMS[arm][1]])
         for arm in ("lr2x", "gamma1", "ema-ramp", "batch64", "beta2-999", "translate", "lazy4")}
# The new `fmnist` preset: the changes that helped, with the time the lazy penalty saves spent on
# more images (96 kimg take no longer than the old 72).
AFTER = ["loss.mng.num_levels=1", "optim.base_lr=4e-4", "optim.ema_kimg=10", "optim.ema_rampup=0.05",
         "loss.penalty.every=4", "train.kimg=96"]
ARMS["after"] = ("the new fmnist preset: no MNG, 2x lr, EMA ramp-up, lazy R1/R2, 96 kimg", AFTER)
ARMS["after-eager"] = ("the new preset with R1/R2 on every step at 72 kimg (about the same wall clock)",
                      [*AFTER, "loss.penalty.every=1", "train.kimg=72"])
# The lever left for the short budget: the same preset with its lr decayed (cosine, from half the
# budget down to 0.1x at 96 kimg).
ARMS["after-decay"] = ("the new preset with a cosine lr decay over the second half of the budget",
                       [*AFTER, "optim.lr_decay=cosine"])
# The same recipe with a faster step that keeps the maths (compiled blocks, one G forward per
# iteration: 0.72x the eager step, interleaved on an idle machine), the time saved spent on more
# images: 120 kimg take about what 96 eager kimg take, the ~1 min of compilation included.
ARMS["after-compiled"] = ("the decayed preset, compiled, one G pass per iteration, 120 kimg in the same time",
                          [*ARMS["after-decay"][1], "train.compile=true", "train.single_generator_pass=true",
                           "train.kimg=120"])
# A longer EMA for the compiled recipe. The EMA changes no training step, so with the seed fixed
# these arms follow after-compiled's raw generator and differ from it only in the average: its
# half-life, min(ema_kimg, ema_rampup * kimg seen), was only 6 kimg at the end of the 120.
ARMS["compiled-ema15"] = ("after-compiled with the EMA ramp-up 3x longer (half-life 10 kimg from 67 kimg on)",
                          [*ARMS["after-compiled"][1], "optim.ema_rampup=0.15"])
ARMS["compiled-ema20"] = ("after-compiled with a 20-kimg EMA half-life, ramped over 0.2 of the images seen",
                          [*ARMS["after-compiled"][1], "optim.ema_kimg=20", "optim.ema_rampup=0.2"])
# Two more single changes to the compiled recipe at the same cost per step.
ARMS["compiled-lr8e-4"] = ("after-compiled at 2x its base lr (8e-4), with the same decay",
                           [*ARMS["after-compiled"][1], "optim.base_lr=8e-4"])
ARMS["compiled-gamma1"] = ("after-compiled with R1/R2 weighted 1 instead of 0.1",
                           [*ARMS["after-compiled"][1], "loss.penalty.gamma_r1=1.0", "loss.penalty.gamma_r2=1.0"])
# gamma 1 lowered coverage in both seeds, so the other direction: a weaker penalty.
ARMS["compiled-gamma0.03"] = ("after-compiled with R1/R2 weighted 0.03 instead of 0.1",
                              [*ARMS["after-compiled"][1], "loss.penalty.gamma_r1=0.03", "loss.penalty.gamma_r2=0.03"])
# The second core: the preset trains on one thread in one process, so a 2-core machine leaves a core
# idle. benchmarks/cpu_processes.py (alternating, idle machine, OMP_NUM_THREADS=1 in every run): one
# process of 32 took 0.258 s per iteration, two processes of 32 (global batch 64) 0.364 s: 1.42x the
# images per second, so 170 kimg (2,657 iterations) in the preset's time. The 230-kimg arm was sized
# with an earlier measurement whose single process ran without OMP_NUM_THREADS (0.352 s, too slow):
# it took ~1.4x the preset's time, and is kept as a longer point of the same recipe.
TWO_PROCESSES = [*ARMS["after-compiled"][1], "train.processes=2", "train.global_batch=64"]
ARMS["compiled-2proc-b64"] = ("after-compiled on two processes of 32 images (global batch 64), 230 kimg "
                              "(~1.4x the time)", [*TWO_PROCESSES, "train.kimg=230"])
ARMS["compiled-2proc-b64-170"] = ("after-compiled on two processes of 32 images (global batch 64), 170 kimg in "
                                  "the same time", [*TWO_PROCESSES, "train.kimg=170"])
# The paper's MNG claim where it is meant to hold, with the new recipe: an 8-block generator.
MINI = ["model.generator=GAT-Mini/2", "model.discriminator=GAT-Mini/2"]
ARMS["mini-mng"] = ("GAT-Mini/2 (8 blocks), new recipe, exponential MNG", [*AFTER, *MINI, "loss.mng.num_levels=4"])
ARMS["mini-mng-off"] = ("GAT-Mini/2 (8 blocks), new recipe, MNG off", [*AFTER, *MINI])


FULL = ["eval.every=250"]  # the arm's whole budget (train.kimg), evaluated as often as the screen


# Arms that train on several processes (train.processes): `time` runs every arm in one process.
SEVERAL_PROCESSES = {arm for arm, (_, overrides) in ARMS.items() if "train.processes=2" in overrides}


def run_name(arm: str, full: bool, seed: int) -> str:
    return f"{arm}{'-full' if full else ''}{f'-seed{seed}' if seed else ''}"


# Arms whose iteration does the same work as another's (they change numbers, not shapes or passes):
# `time` measures the one on the right.
SAME_COST = {arm: "baseline" for arm in ("mapping-lr1", "lr2x", "gamma1", "ema-ramp", "beta2-999")} | \
    {f"mng-off+{arm}": "mng-off" for arm in ("lr2x", "gamma1", "ema-ramp", "beta2-999")} | \
    {f"compiled-{arm}": "after-compiled" for arm in ("ema15", "ema20", "lr8e-4", "gamma1", "gamma0.03")} | \
    {"after-decay": "after"}


def commands(arms: list[str], runs_dir: Path, full: bool, seed: int, extra: list[str]) -> dict[str, list[str]]:
    budget = FULL if full else SCREEN
    return {run_name(arm, full, seed): ["-c", "fmnist", f"run.dir={runs_dir}", f"run.name={run_name(arm, full, seed)}",
                                        *BEFORE, *ARMS[arm][1], *budget, f"train.seed={seed}", *extra]
            for arm in arms}


def curve(run: Path) -> list[dict]:
    """The in-training metric of a run, one record per evaluation."""
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "eval/fd" in r]


def at_wall_clock(points: list[dict], seconds_per_step: float, budget: float, key: str) -> float | None:
    """The in-training score at `budget` seconds of training: the last evaluation reached by then."""
    reached = [p[key] for p in points if p["step"] * seconds_per_step <= budget * 1.0001]
    return reached[-1] if reached else None


def plot_against_time(path: Path, series: dict[str, tuple[list[float], list[float]]], ylabel: str,
                      title: str, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, (x, y) in series.items():
        axis.plot(x, y, marker="o", markersize=3, label=label)
    axis.set(xlabel="training time on one core (minutes, from the interleaved step time)", ylabel=ylabel, title=title)
    if log:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def screen_report(runs_dir: Path, out: Path) -> list[str]:
    """The screening table and its curves (FD and recall against wall clock)."""
    timing = json.loads((runs_dir / "timing.json").read_text()) if (runs_dir / "timing.json").is_file() else {}
    arms = [a for a in ARMS if (runs_dir / a / "stats.jsonl").is_file() and curve(runs_dir / a)]
    base_seconds = timing.get("baseline")
    budget = None if base_seconds is None else base_seconds * curve(runs_dir / "baseline")[-1]["step"]
    lines = ["| arm | change | s/it | step | FD | recall | precision | consistency | z-spread / real | "
             "D overfit gap | last FD, recall within the baseline's time |", "|---" * 11 + "|"]
    fd_series, recall_series = {}, {}
    for arm in arms:
        run, points = runs_dir / arm, curve(runs_dir / arm)
        end, seconds = points[-1], timing.get(arm, timing.get(SAME_COST.get(arm, ""), None))
        equal_time = "n/a"
        if seconds and budget:
            fd, recall = (at_wall_clock(points, seconds, budget, k) for k in ("eval/fd", "eval/recall"))
            equal_time = "n/a" if fd is None else f"{fd:.1f}, {recall:.3f}"
            minutes = [p["step"] * seconds / 60 for p in points]
            fd_series[arm] = (minutes, [p["eval/fd"] for p in points])
            recall_series[arm] = (minutes, [p["eval/recall"] for p in points])
        z_spread, gap = last_record(run, "diversity/z_spread_vs_real"), last_record(run, "overfit/gap")
        lines.append(f"| {arm} | {ARMS[arm][0]} | {seconds or float('nan'):.3f} | {end['step']} | "
                     f"{end['eval/fd']:.1f} | {end['eval/recall']:.3f} | {end['eval/precision']:.3f} | "
                     f"{100 * end['eval/consistency']:.1f}% | "
                     f"{z_spread or float('nan'):.2f} | {gap or float('nan'):.2f} | {equal_time} |")
    if fd_series:
        plot_against_time(out / "screen-fd.png", fd_series, "domain FD (2,000 samples)", "FD during training", log=True)
        plot_against_time(out / "screen-recall.png", recall_series, "recall (2,000 samples)", "recall during training")
    return lines


def score_final(run: Path, metric, samples: int) -> dict:
    """The EMA generator at the run's last checkpoint on `samples` class-balanced samples, truncation 1,
    with per-class recall and spread (the `gatgan eval` protocol)."""
    import numpy as np

    from gatgan.eval.suite import nhwc_to_nchw
    from gatgan.sample import Sampler, class_balanced_labels

    sampler = Sampler.from_run(run)
    labels = class_balanced_labels(samples, len(sampler.class_names))
    images = sampler.images(list(range(samples)), labels, 1.0)
    scores, per_class = metric.evaluate_nchw(nhwc_to_nchw(images), np.asarray(labels))
    return {"scores": scores, "per_class": {sampler.class_names[c]: v for c, v in per_class.items()},
            "kimg": last_record(run, "kimg")}


def save_sample_grid(run: Path, path: Path, columns: int = 10) -> None:
    """One row per class, seeds 0..columns-1, truncation 1."""
    from gatgan.images import save_grid
    from gatgan.sample import Sampler

    sampler = Sampler.from_run(run)
    classes = range(len(sampler.class_names))
    images = sampler.images([s for _ in classes for s in range(columns)], [c for c in classes for _ in range(columns)])
    save_grid(images, columns, path)


def final_report(runs_dir: Path, out: Path, finals: dict[str, list[str]], samples: int) -> list[str]:
    """Each final arm (several seeds) at the preset's whole budget, on `samples` samples, beside the
    real-vs-real floor and the tokenizer ceiling; their sample grids."""
    from gatgan.eval.suite import domain_metric, tokenizer_ceiling
    from gatgan.tokenizers import load_tokenizer

    cache = out / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    runs = {name: runs_dir / name for names in finals.values() for name in names if (runs_dir / name).is_dir()}
    if not runs:
        return []
    data = json.loads((next(iter(runs.values())) / "data.json").read_text())["path"]
    metric = domain_metric(data, progress=False)
    if "coverage" not in results.get("ceiling", {}).get("scores", {}):  # absent, or scored before coverage
        ceiling, per_class = tokenizer_ceiling(metric, data, load_tokenizer(next(iter(runs.values())) / "tokenizer"))
        results["ceiling"] = {"scores": ceiling, "per_class": {metric.class_names[c]: v for c, v in per_class.items()}}
    results["floor"] = {"scores": metric.floor,
                        "per_class": {metric.class_names[c]: v for c, v in metric.floor_per_class.items()}}
    for name, run in runs.items():
        scored = results.get(name, {})
        if scored.get("kimg") != last_record(run, "kimg") or "coverage" not in scored.get("scores", {}):
            print(f"scoring {name}", flush=True)
            results[name] = score_final(run, metric, samples)
            save_sample_grid(run, out / f"grid-{name}.png")
    cache.write_text(json.dumps(results, indent=2))
    keys = ("fd", "recall", "coverage", "precision", "density", "consistency", "recall_per_class_mean", "spread_mean")
    lines = ["| arm | run | kimg | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    def cells(scores: dict) -> str:
        return " | ".join(f"{scores[k]:.3f}" for k in keys)

    for arm, names in finals.items():
        for name in (n for n in names if n in results):
            lines.append(f"| {arm} | {name} | {results[name]['kimg']:g} | {cells(results[name]['scores'])} |")
    for label, title in (("ceiling", "tokenizer ceiling"), ("floor", "real-vs-real floor")):
        lines.append(f"| {title} | test split | | {cells(results[label]['scores'])} |")
    return lines


def kimg_report(out: Path, runs: dict[str, Path], name: str, title: str) -> list[str]:
    """FD and recall (and coverage, when every run logged it) of the in-training metric against
    kimg, one curve per run."""
    curves = {label: curve(run) for label, run in runs.items() if (run / "stats.jsonl").is_file()}
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("eval/fd", "domain FD"), ("eval/recall", "recall")]
    if all("eval/coverage" in p for points in curves.values() for p in points):
        keys.append(("eval/coverage", "coverage"))
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
    for label, points in curves.items():
        for axis, (key, _) in zip(axes, keys):
            axis.plot([p["kimg"] for p in points], [p[key] for p in points], marker="o", markersize=3, label=label)
    for axis, (_, ylabel) in zip(axes, keys):
        axis.set(xlabel="kimg", ylabel=f"{ylabel} (2,000 samples)", title=title)
    axes[0].set_yscale("log")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / name, dpi=120)
    plt.close(figure)
    lines = ["| run | kimg | FD | recall | precision | consistency |", "|---|---|---|---|---|---|"]
    for label, points in curves.items():
        for p in points[3::4] if len(points) > 8 else points:
            lines.append(f"| {label} | {p['kimg']:g} | {p['eval/fd']:.1f} | {p['eval/recall']:.3f} | "
                         f"{p['eval/precision']:.3f} | {100 * p['eval/consistency']:.1f}% |")
    return [*lines, "", f"![{title}]({name})"]


def contribution_report(runs: dict[str, Path], samples: int = 256) -> list[str]:
    """LPIPS when one generator block is skipped, per block, for each run's last checkpoint."""
    from gatgan.eval.analyze import contribution
    from gatgan.sample import Sampler

    lines = ["| run | block LPIPS 1..n (first to last) |", "|---|---|"]
    for label, run in runs.items():
        if (run / "checkpoints").is_dir():
            values = contribution(Sampler.from_run(run), samples)
            lines.append(f"| {label} | {' '.join(f'{v:.3f}' for v in values)} |")
    return lines


def seconds_per_step(arms: list[str], steps: int, rounds: int) -> dict[str, float]:
    """Seconds per training iteration of each arm on one thread, interleaved in one process (rounds
    of `steps` iterations per arm after 3 warm-up steps; the fastest round counts), so that a load
    on the machine slows every arm alike and the ratios hold."""
    if several := [arm for arm in arms if arm in SEVERAL_PROCESSES]:
        raise SystemExit(f"{', '.join(several)} train on several processes, which one process cannot time: "
                         "use benchmarks/cpu_processes.py")
    import tempfile

    import torch

    from gatgan.train.config import load_config
    from gatgan.train.trainer import Trainer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {arm: Trainer(load_config("fmnist", [f"run.dir={tmp}", f"run.name=timing-{i}", *BEFORE,
                                                        *ARMS[arm][1]]), progress=False) for i, arm in enumerate(arms)}
        _, per_round = interleaved(trainers, rounds, steps, warmup=3)
        for trainer in trainers.values():
            trainer.close()
    return {arm: min(seconds) for arm, seconds in per_round.items()}


FINALS = {"before (72 kimg)": ["baseline-full"], "after (96 kimg)": ["after-full", "after-full-seed1"],
          "after, R1/R2 every step (72 kimg)": ["after-eager-full"], "after, resumed longer": ["after-long"],
          "after + cosine lr decay (96 kimg)": ["after-decay-full", "after-decay-full-seed1"],
          "after + decay, compiled, one G pass (120 kimg, same time)": ["after-compiled-full",
                                                                       "after-compiled-full-seed1"],
          "the same on two processes of 32 (global batch 64; 170 kimg, same time)": [
              "compiled-2proc-b64-170-full", "compiled-2proc-b64-170-full-seed1"]}
# The MNG pair at depth 8: trained to 16 kimg by `train --arms mini-mng mini-mng-off train.kimg=16`
# (and --seed 1), then resumed to 48 kimg with `gatgan train -c runs/quality/<run>/config.yaml train.kimg=48`.
MINI_FINALS = {"exponential MNG": ["mini-mng", "mini-mng-seed1"], "MNG off": ["mini-mng-off", "mini-mng-off-seed1"]}
# Single changes to the compiled preset, each against its seed's after-compiled run at the same cost.
COMPILED_FINALS = {"after-compiled (the preset)": ["after-compiled-full", "after-compiled-full-seed1"],
                   "EMA ramp-up 0.15": ["compiled-ema15-full"], "EMA 20 kimg, ramp-up 0.2": ["compiled-ema20-full"],
                   "base lr 8e-4": ["compiled-lr8e-4-full"],
                   "R1/R2 weight 1": ["compiled-gamma1-full", "compiled-gamma1-full-seed1"],
                   "R1/R2 weight 0.03": ["compiled-gamma0.03-full", "compiled-gamma0.03-full-seed1"]}
# The second core: two processes of 32 (global batch 64), at the same time and at ~1.4x it.
TWO_PROCESS_FINALS = {"after-compiled, 1 process of 32 (120 kimg)": ["after-compiled-full",
                                                                      "after-compiled-full-seed1"],
                      "2 processes of 32, 170 kimg (the same time)": ["compiled-2proc-b64-170-full",
                                                                      "compiled-2proc-b64-170-full-seed1"],
                      "2 processes of 32, 230 kimg (~1.4x the time)": ["compiled-2proc-b64-full"]}
LONGER = "after-long"  # the `after` arm resumed to a longer budget in its own directory (see FINDINGS)


def report(runs_dir: Path, out: Path, samples: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sample quality and diversity of the embedded default (Fashion-MNIST)",
        "",
        "What the numbers say: [FINDINGS.md](FINDINGS.md) (written by hand).",
        "",
        f"Written by `python benchmarks/quality.py report` on {datetime.date.today()} at commit {_commit()}; "
        f"the runs were trained with `python benchmarks/quality.py train ...` at commit(s) "
        f"{trained_at(runs_dir, [p.stem for p in runs_dir.glob('*.commit')])}. Every arm is the `fmnist` preset as "
        "it was before this study (`BEFORE` in the script) with the overrides listed in `ARMS`; the resolved "
        "configs are in `configs/`.",
        "",
        "Scores: the in-repo domain metric (`gatgan eval`). FD = Fréchet distance in the evaluation "
        "classifier's features (lower is better); recall/precision = k-NN manifolds (k = 3); coverage/density = "
        "k-NN balls around the real samples only (k = 5; Naeem et al. 2020); consistency = "
        "fraction of samples classified as their class; spread = mean pairwise feature distance within a class "
        "over the real class's (1 = as diverse as the data). z-spread / real = the pixel distance between images "
        "of one class for different z over that between real images of the class; D overfit gap = "
        "(D(train) − D(held-out)) / (D(train) − D(fake)).",
        "",
        "## 1. Screen: one change at a time (32 kimg = 1,000 iterations, seed 0)",
        "",
        "In-training metric on 2,000 samples every 250 iterations. 's/it' is each arm's iteration time "
        "measured on one thread by `quality.py time`, which converts steps to wall clock.",
        "",
        *screen_report(runs_dir, out),
        "",
        "![FD during the screen](screen-fd.png) ![recall during the screen](screen-recall.png)",
        "",
        f"## 2. Before and after at the preset's whole budget ({samples:,} samples, truncation 1)",
        "",
        *final_report(runs_dir, out, FINALS, samples),
        "",
        "Sample grids (rows: classes; columns: seeds 0–9), before then after:",
        "",
        "![before](grid-baseline-full.png) ![after](grid-compiled-2proc-b64-170-full.png)",
        "",
        "## 3. In-training metric against images seen",
        "",
        *kimg_report(out, {"before": runs_dir / "baseline-full",
                           "after, seed 0 (resumed past 96 kimg)": runs_dir / LONGER,
                           "after, seed 1": runs_dir / "after-full-seed1"}, "kimg.png", "FD and recall against kimg"),
        "",
        "## 3b. The same preset with a cosine lr decay over the second half of its budget (seeds 0 and 1)",
        "",
        *kimg_report(out, {"after, seed 0": runs_dir / "after-full", "after, seed 1": runs_dir / "after-full-seed1",
                           "after + decay, seed 0": runs_dir / "after-decay-full",
                           "after + decay, seed 1": runs_dir / "after-decay-full-seed1"}, "decay.png",
                     "constant lr vs cosine decay"),
        "",
        f"## 3c. The preset's compiled step spent on 120 kimg, and single changes to it ({samples:,} samples)",
        "",
        "The EMA arms follow the seed-0 preset run's raw generator exactly (the EMA changes no step), so they "
        "differ from it only in the average.",
        "",
        *final_report(runs_dir, out, COMPILED_FINALS, samples),
        "",
        *kimg_report(out, {"decay, 96 kimg eager, seed 0": runs_dir / "after-decay-full",
                           "decay, 96 kimg eager, seed 1": runs_dir / "after-decay-full-seed1",
                           "compiled, 120 kimg, seed 0": runs_dir / "after-compiled-full",
                           "compiled, 120 kimg, seed 1": runs_dir / "after-compiled-full-seed1"}, "compiled.png",
                     "96 eager vs 120 compiled kimg (same time)"),
        "",
        f"## 3d. Both cores: two processes of 32 images, global batch 64 ({samples:,} samples)",
        "",
        "One process of 32 (the compiled preset above) against `train.processes=2` with 32 images each; "
        "`benchmarks/cpu_processes.py` timed 1.42x the images per second, so 170 kimg take the time of 120.",
        "",
        *final_report(runs_dir, out, TWO_PROCESS_FINALS, samples),
        "",
        *kimg_report(out, {"1 x 32, 120 kimg, seed 0": runs_dir / "after-compiled-full",
                           "1 x 32, 120 kimg, seed 1": runs_dir / "after-compiled-full-seed1",
                           "2 x 32, 170 kimg, seed 0": runs_dir / "compiled-2proc-b64-170-full",
                           "2 x 32, 170 kimg, seed 1": runs_dir / "compiled-2proc-b64-170-full-seed1",
                           "2 x 32, 230 kimg, seed 0": runs_dir / "compiled-2proc-b64-full"}, "processes.png",
                     "one process of 32 vs two (same time, and longer)"),
        "",
        f"## 4. MNG at depth 8 (GAT-Mini/2, new recipe, seeds 0 and 1; {samples:,} samples, truncation 1)",
        "",
        *final_report(runs_dir, out, MINI_FINALS, samples),
        "",
        *kimg_report(out, {name: runs_dir / name for names in MINI_FINALS.values() for name in names}, "mini.png",
                     "GAT-Mini/2: MNG vs off"),
        "",
        *contribution_report({name: runs_dir / name for names in MINI_FINALS.values() for name in names}),
        "",
    ]
    (out / "configs").mkdir(exist_ok=True)
    for run in runs_dir.iterdir():
        if (run / "config.yaml").is_file():
            shutil.copyfile(run / "config.yaml", out / "configs" / f"{run.name}.yaml")
    (out / "README.md").write_text("\n".join(lines))
    print(f"wrote {out / 'README.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands_ = parser.add_subparsers(dest="command", required=True)
    train = commands_.add_parser("train", help="train arms (resumes unfinished ones)")
    train.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    train.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    train.add_argument("--jobs", type=int, default=2)
    train.add_argument("--full", action="store_true", help="the preset's whole budget instead of the 32-kimg screen")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm (e.g. train.seed=1)")
    timing = commands_.add_parser("time",
                                  help="seconds per iteration of each arm, interleaved -> <runs-dir>/timing.json")
    timing.add_argument("--arms", nargs="+", choices=list(ARMS),
                        default=[a for a in ARMS if a not in SAME_COST and a not in SEVERAL_PROCESSES])
    timing.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    timing.add_argument("--steps", type=int, default=10)
    timing.add_argument("--rounds", type=int, default=3)
    show = commands_.add_parser("show", help="print each arm's in-training metric")
    show.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    write = commands_.add_parser("report", help="write reports/quality/README.md")
    write.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    write.add_argument("--out", type=Path, default=Path("reports/quality"))
    write.add_argument("--samples", type=int, default=10000, help="samples for the final scores")
    args = parser.parse_args()
    if args.command == "train":
        run_jobs(commands(args.arms, args.runs_dir, args.full, args.seed, args.overrides), args.runs_dir, args.jobs)
    elif args.command == "time":
        timing = seconds_per_step(args.arms, args.steps, args.rounds)
        for arm, seconds in timing.items():
            print(f"{arm:<20} {seconds:.3f} s/it ({seconds / timing[args.arms[0]]:.2f}x {args.arms[0]})")
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        path = args.runs_dir / "timing.json"  # arms timed earlier keep their entries
        path.write_text(json.dumps({**(json.loads(path.read_text()) if path.is_file() else {}), **timing}, indent=2))
    elif args.command == "report":
        report(args.runs_dir, args.out, args.samples)
    else:
        for run in sorted(p for p in args.runs_dir.iterdir() if (p / "stats.jsonl").is_file()):
            points = " ".join(f"{r['step']}:{r['eval/fd']:.0f}/{r.get('eval/recall', 0):.3f}" for r in curve(run))
            print(f"{run.name:<14} {points}")


if __name__ == "__main__":
    main()

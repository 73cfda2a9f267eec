"""The in-training metric and the best checkpoint.

Every `eval.every` steps the main process samples `eval.samples` images from the EMA generator
(fixed seeds, class-balanced labels, no truncation by default, as the authors' in-training FID-5K)
and scores them: FID against the Inception reference on the real stack, the domain metric on the
embedded stack. The scores go to `stats.jsonl` as `eval/<name>`, and the networks with the best
primary score (FID or domain FD, lower is better) are kept in `checkpoints/best/` with `best.json`,
which `gatgan sample --checkpoint runs/<name>/checkpoints/best` reads like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.card import DATA_CARD
from ..eval.suite import build_metric
from ..sample import Sampler, class_balanced_labels
from .checkpoint import BEST, CHECKPOINT_DIR, write_checkpoint_dir
from .config import EvalConfig

BEST_RECORD = "best.json"


class InTrainingEvaluation:
    def __init__(self, config: EvalConfig, sampler: Sampler, data_path: Path, run_dir: Path, start_step: int):
        self.config, self.sampler, self.run_dir = config, sampler, run_dir
        self.metric = build_metric(config.metric, data_path, inception=config.inception or None,
                                   reference=config.reference or None, device=sampler.device, progress=False)
        self.labels = class_balanced_labels(config.samples, len(sampler.class_names))
        self.seeds = list(range(config.samples))
        record = self.best_dir / BEST_RECORD
        self.best = json.loads(record.read_text()) if record.is_file() else None
        if self.best is not None and self.best["step"] > start_step:
            self.best = None  # resumed from an earlier checkpoint: that best belongs to a discarded future

    @property
    def best_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / BEST

    def __call__(self, step: int) -> dict[str, float]:
        images = self.sampler.images(self.seeds, self.labels, self.config.truncation, batch_size=self.config.batch_size)
        scores = self.metric.score(images, np.asarray(self.labels))
        value = scores[self.metric.primary]
        if self.best is None or value < self.best["value"]:
            self._save_best(step, value)
        return {f"eval/{k}": v for k, v in scores.items()} | {f"eval/best_{self.metric.primary}": self.best["value"]}

    def _save_best(self, step: int, value: float) -> None:
        self.best = {"step": step, "metric": f"{self.metric.name}/{self.metric.primary}", "value": value,
                     "samples": self.config.samples, "truncation": self.config.truncation}
        files = {"config.yaml": (self.run_dir / "config.yaml").read_text(),
                 DATA_CARD: (self.run_dir / DATA_CARD).read_text(), BEST_RECORD: json.dumps(self.best, indent=2)}
        write_checkpoint_dir(self.best_dir, {"generator_ema": self.sampler.generator.state_dict()}, extra_files=files)

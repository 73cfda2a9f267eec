"""The in-training metric, the best checkpoint, and `gatgan eval` / `gatgan analyze` end to end on a
tiny 16x16 data set whose domain classifier is trained (briefly) once per session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tinyrun import TINY_CLASSES, make_tiny_images, tiny_overrides

from gatgan.cli import main
from gatgan.data.inputs import prepare_arrays
from gatgan.data.prepare import PrepareOptions
from gatgan.eval.suite import domain_metric
from gatgan.sample import Sampler
from gatgan.tokenizers.identity import IdentityTokenizer
from gatgan.train.checkpoint import load_network
from gatgan.train.config import load_config
from gatgan.train.evaluation import BEST_RECORD, InTrainingEvaluation
from gatgan.train.trainer import train

EVAL = {"eval.every": 3, "eval.metric": "domain", "eval.samples": 24, "eval.batch_size": 10}


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    """96 images of 16x16 (the classifier's smallest size), with the domain metric cached."""
    images, labels = make_tiny_images(96, size=16)
    path = prepare_arrays(tmp_path_factory.mktemp("data16") / "tiny16", images, labels, TINY_CLASSES,
                          IdentityTokenizer(1), "synthetic", PrepareOptions(progress=False))
    domain_metric(path, progress=False, classifier_steps=40)
    return path


@pytest.fixture(scope="module")
def run16(data16, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    train(load_config("fmnist", tiny_overrides(data16, root, **EVAL, **{"loss.repa.teacher": ""})), progress=False)
    return root / "tiny"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_metric_is_logged_and_the_best_networks_are_kept(run16):
    scored = [r for r in _records(run16) if "eval/fd" in r]
    assert [r["step"] for r in scored] == [3, 6]
    assert {"eval/consistency", "eval/precision", "eval/recall", "eval/kid"} <= set(scored[0])
    best = json.loads((run16 / "checkpoints" / "best" / BEST_RECORD).read_text())
    winner = min(scored, key=lambda r: r["eval/fd"])
    assert best["step"] == winner["step"] and best["value"] == pytest.approx(winner["eval/fd"])
    assert scored[-1]["eval/best_fd"] == pytest.approx(winner["eval/fd"])
    at_step = load_network(run16 / "checkpoints" / f"{winner['step']:08d}", "generator_ema")
    kept = load_network(run16 / "checkpoints" / "best", "generator_ema")
    assert all(np.array_equal(at_step[k].numpy(), kept[k].numpy()) for k in at_step)
    sampler = Sampler.from_run(run16, run16 / "checkpoints" / "best")
    assert sampler.images([0, 1], [0, 2]).shape == (2, 16, 16, 1)


@pytest.mark.slow
def test_a_best_from_a_discarded_future_is_forgotten_on_resume(run16):
    best = json.loads((run16 / "checkpoints" / "best" / BEST_RECORD).read_text())
    config = load_config("fmnist", tiny_overrides(Path(json.loads((run16 / "data.json").read_text())["path"]),
                                                  run16.parent, **EVAL))
    sampler = Sampler.from_run(run16)
    before = InTrainingEvaluation(config.eval, sampler, sampler_data(run16), run16, start_step=best["step"])
    assert before.best == best
    after_rewind = InTrainingEvaluation(config.eval, sampler, sampler_data(run16), run16, start_step=best["step"] - 1)
    assert after_rewind.best is None


def sampler_data(run: Path) -> Path:
    return Path(json.loads((run / "data.json").read_text())["path"])


@pytest.mark.slow
def test_gatgan_eval_scores_a_run_and_an_npz_with_the_floor(run16, tmp_path, capsys):
    out = tmp_path / "scores.json"
    main(["eval", "--run", str(run16), "--metric", "domain", "--num", "30", "--batch-size", "7", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["metric"] == "domain" and result["samples"] == 30
    assert {"fd", "consistency", "precision", "recall"} <= set(result["scores"])
    assert {"fd", "consistency"} <= set(result["floor"])
    assert "real-vs-real floor" in capsys.readouterr().out

    samples = tmp_path / "s.npz"
    main(["sample", "--run", str(run16), "--num", "30", "--truncation", "1", "--out", str(samples)])
    main(["eval", "--samples", str(samples), "--data", str(sampler_data(run16)), "--metric", "domain",
          "--out", str(out)])
    from_npz = json.loads(out.read_text())["scores"]
    assert from_npz["fd"] == pytest.approx(result["scores"]["fd"])  # same seeds, labels and truncation


def test_gatgan_eval_needs_exactly_one_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval"])
    assert "either --run" in capsys.readouterr().err


@pytest.mark.slow
def test_gatgan_analyze_writes_every_analysis(run16, tmp_path):
    out = tmp_path / "analysis"
    main(["analyze", "--run", str(run16), "--out", str(out), "--num", "6", "--truncations", "0,1",
          "--truncation-samples", "12", "--metric", "domain"])
    results = json.loads((out / "analysis.json").read_text())
    per_block = results["contribution"]["per_block"]
    assert len(per_block) == 4 and all(v > 0 for v in per_block)  # GAT-Nano: 4 blocks, all active
    assert [c["truncation"] for c in results["truncation"]["curve"]] == [0.0, 1.0]
    for name in ("contribution.png", "pca.png", "truncation.png", "interpolation_seeds.png",
                 "interpolation_classes.png"):
        assert (out / name).stat().st_size > 0

import json

import numpy as np
import pytest
from PIL import Image
from tinyrun import TINY_CLASSES, make_tiny_images, tiny_config, tiny_overrides

from gatgan.cli import main
from gatgan.data.inputs import prepare_arrays
from gatgan.data.prepare import PrepareOptions
from gatgan.eval.suite import domain_metric
from gatgan.tokenizers.identity import IdentityTokenizer
from gatgan.train.config import load_config
from gatgan.train.trainer import train


@pytest.fixture(scope="module")
def domain_run(tmp_path_factory):
    """A tiny run on 16x16 images (the domain classifier's smallest size), enough of them for per-class
    scores of the held-out tenth, with the domain metric cached beside the data."""
    root = tmp_path_factory.mktemp("domain")
    images, labels = make_tiny_images(300, size=16)
    data = prepare_arrays(root / "data", images, labels, TINY_CLASSES, IdentityTokenizer(1), "synthetic",
                          PrepareOptions(progress=False))
    domain_metric(data, progress=False, classifier_steps=20)
    train(tiny_config(data, root), progress=False)
    return root / "tiny"


@pytest.mark.slow
def test_train_then_sample_from_the_command_line(tiny_data_with_teacher, tmp_path, capsys):
    """The shipped preset (REPA on, with the teacher stored with the data, compiled blocks, its own
    number of processes) on the tiny data."""
    shipped = load_config("fmnist").train
    main(["train", "-c", "fmnist", *tiny_overrides(tiny_data_with_teacher, tmp_path, **{
        "train.compile": shipped.compile, "train.processes": shipped.processes})])
    run = tmp_path / "tiny"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "latest").is_file()
    out, grid = tmp_path / "s.npz", tmp_path / "grid.png"
    main(["sample", "--run", str(run), "--num", "7", "--out", str(out), "--grid", str(grid), "--batch-size", "3"])
    data = np.load(out)
    assert data["arr_0"].shape == (7, 8, 8, 1) and data["arr_1"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert Image.open(grid).size[1] > 3 * 8  # one row per class
    main(["sample", "--run", str(run), "--num", "4", "--classes", "bright,dark", "--out", str(out)])
    assert np.load(out)["arr_1"].tolist() == [2, 0, 2, 0]


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "gatgan sample: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "-c", "fmnist", "train.nonsense=1"])
    assert "unknown config key" in capsys.readouterr().err


def test_models_lists_the_paper_sizes(capsys):
    main(["models"])
    out = capsys.readouterr().out
    assert "GAT-XL/2" in out and "602" in out


@pytest.mark.slow
def test_eval_of_a_run_reports_the_tokenizer_ceiling_and_per_class_scores(domain_run, tmp_path, capsys):
    out = tmp_path / "scores.json"
    eval_args = ["eval", "--run", str(domain_run), "--metric", "domain", "--num", "60", "--batch-size", "7"]
    main([*eval_args, "--out", str(out)])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "tokenizer ceiling" in printed and "floor recall" in printed
    assert {"recall_per_class_mean", "spread_mean"} <= set(result["scores"]) & set(result["ceiling"])
    # the run's tokenizer is the identity, so its ceiling is the real-vs-real floor
    assert result["ceiling"]["fd"] == pytest.approx(result["floor"]["fd"])
    assert sorted(result["per_class"]) == sorted(TINY_CLASSES)
    assert all(set(scores) == {"samples", "floor", "ceiling"} for scores in result["per_class"].values())
    assert {"precision", "recall", "spread", "consistency"} <= set(result["per_class"]["grey"]["samples"])
    assert result["per_class"]["grey"]["samples"]["count"] == 20

    main([*eval_args, "--out", str(out), "--no-ceiling"])
    without = json.loads(out.read_text())
    assert "ceiling" not in without and "tokenizer ceiling" not in capsys.readouterr().out
    assert all(set(scores) == {"samples", "floor"} for scores in without["per_class"].values())
    assert without["scores"] == result["scores"]


def test_train_without_a_preset_refuses_other_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["train", f"data.path={tmp_path}"])
    assert exit_code.value.code == 2
    assert "no preset: pass -c" in capsys.readouterr().err


def test_preparing_images_needs_an_explicit_vae(tmp_path, capsys):
    (tmp_path / "images" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["prepare", "--source", str(tmp_path / "images"), "--out", str(tmp_path / "out")])
    assert "--vae is required with --source" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_shipped_preset_loads_and_the_imagenet_ones_are_the_papers_recipe():
    from gatgan.train.config import PRESET_DIR, load_config

    for path in sorted(PRESET_DIR.rglob("*.yaml")):
        load_config(path.relative_to(PRESET_DIR).with_suffix("").as_posix())
    names = set()
    for size, kimg in (("s-2", 25600), ("s-4", 25600), ("b-2", 25600), ("l-2", 25600), ("xl-2", 76800)):
        config = load_config(f"imagenet256/gat-{size}")
        names.add(config.run.name)
        assert config.model.generator == config.model.discriminator == f"GAT-{size.upper().replace('-', '/')}"
        assert (config.train.global_batch, config.train.kimg, config.train.precision) == (512, kimg, "bf16")
        assert config.loss.repa.teacher.startswith("dinov2_vitb14:") and config.loss.repa.weight == 1.0
        assert (config.optim.ema_decay, config.optim.ema_kimg, config.loss.mng.num_levels) == (0.999, 0, 4)
        assert (config.eval.every, config.eval.samples, config.eval.metric) == (2500, 5000, "inception")
    assert len(names) == 5  # each its own run


def test_version(capsys):
    from gatgan import __version__

    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0 and capsys.readouterr().out.strip() == f"gatgan {__version__}"


def test_a_grid_with_about_one_sample_per_class_is_laid_out_in_sample_order(tiny_run, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    main(["sample", "--run", str(tiny_run), "--num", "3", "--grid", str(grid)])
    width, height = Image.open(grid).size
    assert width > 3 * 8 > height  # one row of 3, not a 3-tall, 1-wide strip of classes
    assert "first 3 samples" in capsys.readouterr().out

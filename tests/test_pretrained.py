import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tinyrun import TINY_CLASSES

from gatgan import GAT
from gatgan.cli import main
from gatgan.sample import Sampler
from gatgan.train.checkpoint import BEST, CHECKPOINT_DIR

SEEDS, CLASSES = [5, 6, 7, 8], [0, "grey", 2, "dark"]
LABELS = [0, 1, 2, 0]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return GAT.from_run(tiny_run).save_pretrained(tmp_path_factory.mktemp("models") / "tiny-gat")


@pytest.fixture(scope="module")
def model(exported):
    return GAT.from_pretrained(exported)


def test_an_exported_model_draws_the_runs_images_bit_for_bit(tiny_run, model):
    expected = Sampler.from_run(tiny_run).images(SEEDS, LABELS, truncation=0.7, guidance=1.5)
    images = model.generate(CLASSES, seeds=SEEDS, truncation=0.7, guidance=1.5, output="numpy", batch_size=3)
    np.testing.assert_array_equal(images, expected)
    from_the_run = GAT.from_pretrained(tiny_run).generate(CLASSES, SEEDS, 0.7, 1.5, output="numpy")
    np.testing.assert_array_equal(from_the_run, expected)


def test_classes_by_name_or_index_and_default_seeds(model):
    assert model.class_names == TINY_CLASSES and model.num_classes == 3
    assert repr(model) == "GAT('tiny': GAT-Nano/2, 3 classes)"
    by_name = model.generate(["dark", "bright"], output="numpy")
    np.testing.assert_array_equal(by_name, model.generate([0, 2], seeds=[0, 1], output="numpy"))
    one_class = model.generate("grey", seeds=[3, 4], output="numpy")
    np.testing.assert_array_equal(one_class, model.generate([1, 1], seeds=[3, 4], output="numpy"))
    with pytest.raises(ValueError, match=", ".join(TINY_CLASSES)):
        model.generate("purple")
    with pytest.raises(ValueError, match="2 classes but 3 seeds"):
        model.generate([0, 1], seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="output must be"):
        model.generate(0, output="jpeg")


def test_tensor_and_pil_outputs_hold_the_same_pixels(model):
    pixels = model.generate([0, 1], output="numpy")
    tensor = model.generate([0, 1], output="tensor")
    assert tensor.shape == (2, 1, 8, 8) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    torch.testing.assert_close(tensor.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), pixels)
    pil = model.generate([0, 1], output="pil")
    assert all(isinstance(image, Image.Image) and image.size == (8, 8) for image in pil)
    np.testing.assert_array_equal(np.asarray(pil[1]), pixels[1, ..., 0])


def test_save_load_save_is_a_fixed_point(model, exported, tmp_path):
    again = model.save_pretrained(tmp_path / "again")
    for name in ("config.json", "card.json", "README.md", "model.safetensors", "tokenizer/tokenizer.json"):
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name
    reloaded = GAT.from_pretrained(again)
    np.testing.assert_array_equal(reloaded.generate(CLASSES, SEEDS, output="numpy"),
                                  model.generate(CLASSES, SEEDS, output="numpy"))
    assert reloaded.config == model.config and reloaded.card == model.card
    assert not list(tmp_path.glob(".*")), "the staging folder was left behind"


def test_the_model_card_says_what_the_model_is_and_saw(model, exported):
    card = (exported / "README.md").read_text()
    assert model.card["kimg"] == pytest.approx(0.072) and "0.072 kimg (step 6)" in card
    assert f"{model.card['parameters']:,} parameters" in card and "GAT-Nano/2" in card
    assert "- source: synthetic" in card and "- images: 96" in card and "dark, grey, bright" in card
    assert "```yaml\nrun:\n  name: tiny" in card and "global_batch: 12" in card
    assert "No evaluation was recorded" in card
    assert 'GAT.from_pretrained("path/to/this/folder").generate(["dark", "grey"]' in card
    config = json.loads((exported / "config.json").read_text())
    assert config["model"]["generator"] == "GAT-Nano/2" and config["latent_shape"] == [1, 8, 8]
    assert config["training_config"]["train"]["global_batch"] == 12


def test_the_card_reports_the_runs_scores(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    best = {"step": 3, "metric": "domain/fd", "value": 12.5, "samples": 96, "truncation": 1.0}
    (run / CHECKPOINT_DIR / BEST).mkdir()
    (run / CHECKPOINT_DIR / BEST / "best.json").write_text(json.dumps(best))
    with open(run / "stats.jsonl", "a") as log:
        log.write(json.dumps({"step": 6, "kimg": 0.072, "loss/G": 1.0, "eval/fd": 13.25}) + "\n")
    card = (GAT.from_run(run).save_pretrained(tmp_path / "out") / "README.md").read_text()
    assert "best in-training domain/fd: 12.5 at step 3" in card
    assert "last in-training evaluation (step 6, 0.072 kimg): eval/fd = 13.25" in card


def test_export_model_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "model"
    main(["export-model", "--run", str(tiny_run), "--out", str(out),
          "--checkpoint", str(tiny_run / CHECKPOINT_DIR / "00000003")])
    printed = capsys.readouterr().out
    assert str(out) in printed and "model.safetensors" in printed and "0.036 kimg" in printed
    assert GAT.from_pretrained(out).card["step"] == 3


def test_export_refuses_a_missing_best_and_a_folder_it_did_not_write(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export-model", "--run", str(tiny_run), "--out", str(tmp_path / "m"), "--checkpoint", "best"])
    assert "has no checkpoints/best" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved gatgan model"):
        GAT.from_run(tiny_run).save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_hub_id_is_downloaded_with_snapshot_download(exported, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(exported)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    assert GAT.from_pretrained("someone/tiny-gat").class_names == TINY_CLASSES
    assert asked == ["someone/tiny-gat"]


def test_a_missing_local_path_is_reported_as_such(tmp_path):
    for missing in (tmp_path / "nothing", "nothing-here", "./nothing/here"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            GAT.from_pretrained(missing)


def test_the_generator_can_run_in_bfloat16(exported, model):
    half = GAT.from_pretrained(exported, dtype=torch.bfloat16)
    assert next(half.sampler.generator.parameters()).dtype == torch.bfloat16
    images = half.generate([0, 2], output="numpy")
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 1)
    reference = model.generate([0, 2], output="numpy").astype(int)
    assert np.abs(images.astype(int) - reference).mean() < 8


@pytest.mark.parametrize("load", ["GAT.from_run", "gatgan eval"])
def test_loading_a_run_hashes_each_checkpoint_file_once(tiny_run, monkeypatch, tmp_path, load):
    """latest_checkpoint verifies the checkpoint it picks; loading it must not hash it again."""
    import gatgan.train.checkpoint as checkpoint

    hashed, original = [], checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda path: hashed.append(path.name) or original(path))
    if load == "GAT.from_run":
        GAT.from_run(tiny_run)
    else:
        main(["eval", "--run", str(tiny_run), "--num", "8", "--metric", "domain", "--no-ceiling",
              "--out", str(tmp_path / "eval.json")])
    assert hashed and len(hashed) == len(set(hashed)), hashed

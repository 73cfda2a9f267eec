"""The real stack end to end on tiny images: an image folder -> SD-VAE (diffusers AutoencoderKL,
random weights, small config) moments -> training -> samples decoded by the copy kept with the run."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from tinyrun import tiny_overrides

from gatgan.cli import main
from gatgan.data.latents import LatentDataset

pytest.importorskip("diffusers")

CLASSES = ["cat", "dog", "owl"]


def _image_folder(root):
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = root / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        height, width = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_image_folder_to_samples_with_an_sd_vae(vae_dir, tmp_path, capsys):
    data = tmp_path / "data"
    main(["prepare", "--source", str(_image_folder(tmp_path / "images")), "--out", str(data), "--vae", str(vae_dir),
          "--resolution", "16", "--flip", "--shard-size", "10", "--workers", "0"])
    prepared = LatentDataset(data)
    assert len(prepared) == 24 and prepared.class_names == CLASSES and prepared.latent_size == 8
    assert prepared.index["tokenizer"]["kind"] == "sd_vae" and prepared.scaling.scale == [0.18215]
    assert prepared.index["image_shape"] == [3, 16, 16] and prepared.has_flipped

    overrides = tiny_overrides(data, tmp_path / "runs", **{"train.global_batch": 8, "train.kimg": 0.024,
                                                           "loss.repa.teacher": '""'})
    main(["train", "-c", "fmnist", *overrides])
    run = tmp_path / "runs" / "tiny"
    card = json.loads((run / "checkpoints" / "00000003" / "data.json").read_text())
    assert card["class_names"] == CLASSES and card["scaling"]["scale"] == [0.18215]

    shutil.move(data, tmp_path / "moved")  # sampling needs neither the data nor its old path
    out = tmp_path / "s.npz"
    main(["sample", "--run", str(run), "--num", "4", "--classes", "owl,cat", "--out", str(out)])
    samples = np.load(out)
    assert samples["arr_0"].shape == (4, 16, 16, 3) and samples["arr_1"].tolist() == [2, 0, 2, 0]

    # Resuming on the moved data is fine; on other data it is refused.
    main(["train", "-c", "fmnist", *overrides, f"data.path={tmp_path / 'moved'}", "train.kimg=0.032"])
    assert (run / "checkpoints" / "00000004").is_dir()
    other = tmp_path / "other"
    main(["prepare", "--source", str(tmp_path / "images"), "--out", str(other), "--vae", str(vae_dir),
          "--resolution", "16", "--workers", "0", "--latent-norm", "per-channel"])
    with pytest.raises(SystemExit):
        main(["train", "-c", "fmnist", *overrides, f"data.path={other}", "train.kimg=0.04"])
    assert "not the data this run was trained on (scaling differ" in capsys.readouterr().err

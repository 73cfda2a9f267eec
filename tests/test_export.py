"""gatgan export: the generator and decoder graphs reproduce the PyTorch modules, at any batch size."""

import numpy as np
import onnxruntime
import pytest
import torch

from gatgan.cli import main
from gatgan.export import export_model
from gatgan.images import to_uint8
from gatgan.sample import Sampler, seeded_normal


@pytest.mark.parametrize("fmt, suffix", [("exported-program", ".pt2"), ("onnx", ".onnx")])
def test_exported_graphs_match_pytorch_and_chain_into_the_samplers_images(tiny_run, tmp_path, fmt, suffix):
    exported = export_model(Sampler.from_run(tiny_run), tmp_path, fmt, truncation=0.7)
    assert sorted(exported) == ["decoder", "generator"]
    assert all(e.path.suffix == suffix and e.max_abs_error < 1e-4 for e in exported.values())

    seeds, labels = [3, 4, 5, 6, 7], [0, 1, 2, 0, 1]  # another batch size than traced (2) or checked (3)
    z, y = seeded_normal(seeds, Sampler.from_run(tiny_run).generator.z_dim), torch.tensor(labels)
    if fmt == "exported-program":
        generator = torch.export.load(exported["generator"].path).module()
        decoder = torch.export.load(exported["decoder"].path).module()
        images = decoder(generator(z, y))
    else:
        run = {name: onnxruntime.InferenceSession(str(e.path)) for name, e in exported.items()}
        latents = run["generator"].run(None, {i.name: v for i, v in zip(run["generator"].get_inputs(),
                                                                          (z.numpy(), y.numpy()))})[0]
        images = torch.from_numpy(run["decoder"].run(None, {run["decoder"].get_inputs()[0].name: latents})[0])
    expected = Sampler.from_run(tiny_run).images(seeds, labels, truncation=0.7)
    assert np.abs(to_uint8(images).astype(int) - expected.astype(int)).max() <= 1  # rounding at most


def test_the_export_command_reports_the_parity(tiny_run, tmp_path, capsys):
    main(["export", "--run", str(tiny_run), "--out", str(tmp_path / "graphs")])
    printed = capsys.readouterr().out
    assert printed.count("max abs difference from PyTorch") == 2
    assert (tmp_path / "graphs" / "generator.pt2").is_file() and (tmp_path / "graphs" / "decoder.pt2").is_file()


def test_an_unknown_format_is_refused(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(Sampler.from_run(tiny_run), tmp_path, "tflite")

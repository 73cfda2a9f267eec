"""`gatgan plot` (training curves from stats.jsonl) and `gatgan interpolate` (seed-to-seed strips)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gatgan.cli import main
from gatgan.plots import interpolation_frames, slerp
from gatgan.sample import Sampler

SIZE = 8  # the tiny run's image size


@pytest.fixture(scope="module")
def sampler(tiny_run):
    return Sampler.from_run(tiny_run)


def _assert_png(path, min_bytes=2000):
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_plot_writes_the_figures_of_the_logged_keys_only(tiny_run, tmp_path, capsys):
    out = tmp_path / "plots"
    main(["plot", "--run", str(tiny_run), "--out", str(out)])
    # the tiny run logs losses, diversity and step times, but no alignment (no teacher) and no evaluation
    expected = {"losses.png", "diagnostics.png", "throughput.png"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        _assert_png(out / name)
    printed = capsys.readouterr().out
    assert all(f"wrote {out / name}" in printed for name in expected)


def test_plot_skips_a_torn_line_and_nulls_and_defaults_to_run_plots(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    records = [{"step": s, "kimg": s * 0.012, "sec_per_step": None if s == 2 else 0.1, "loss/D": 0.7,
                "loss/G": None, "eval/fd": 5.0 - s if s % 2 else None, "eval/recall": 0.5,
                "align/cknna_real": 0.1 * s, "overfit/gap": None} for s in range(1, 5)]
    lines = [json.dumps(r) for r in records]
    (run / "stats.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "kimg": 0.0')  # killed mid-write
    main(["plot", "--run", str(run)])
    written = {p.name for p in (run / "plots").iterdir()}
    # overfit/gap is null everywhere, so diagnostics has nothing to draw
    assert written == {"losses.png", "metric.png", "alignment.png", "throughput.png"}
    for name in written:
        _assert_png(run / "plots" / name)


def test_plot_without_stats_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "stats.jsonl is missing or empty" in capsys.readouterr().err


def test_slerp_keeps_the_norm_and_hits_both_ends_exactly():
    a, b = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    path = slerp(a, b, 9)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    low, high = sorted([a.norm(), b.norm()])
    assert ((path.norm(dim=1) > 0.99 * low) & (path.norm(dim=1) < 1.01 * high)).all()
    torch.testing.assert_close(slerp(a, a, 3), a.expand(3, -1))  # no arc: the (constant) line


def test_interpolate_z_strip_ends_are_the_sampled_images(tiny_run, sampler, tmp_path, capsys):
    prefix = tmp_path / "walk"
    main(["interpolate", "--run", str(tiny_run), "--class", "grey", "--seeds", "3,7,11", "--steps", "5",
          "--truncation", "0.8", "--out", str(prefix), "--gif"])
    frames = 2 * (5 - 1) + 1  # shared keyframes once
    strip = np.asarray(Image.open(prefix.with_suffix(".png")))
    assert strip.shape == (SIZE, frames * SIZE)
    sampled = sampler.images([3, 7, 11], [1, 1, 1], truncation=0.8)[..., 0]
    for key, image in zip((0, 4, 8), sampled):
        np.testing.assert_array_equal(strip[:, key * SIZE:(key + 1) * SIZE], image)
    with Image.open(prefix.with_suffix(".gif")) as gif:
        assert gif.n_frames == frames
    assert "walk.gif" in capsys.readouterr().out


def test_interpolate_w_walks_between_the_seeds_mapping_outputs(tiny_run, sampler, tmp_path):
    z_frames = interpolation_frames(sampler, 2, [0, 1], steps=6, space="z", truncation=1.0)
    w_frames = interpolation_frames(sampler, 2, [0, 1], steps=6, space="w", truncation=1.0)
    assert w_frames.shape == z_frames.shape == (6, SIZE, SIZE, 1) and w_frames.dtype == np.uint8
    sampled = sampler.images([0, 1], [2, 2])
    np.testing.assert_array_equal(w_frames[[0, -1]], sampled)  # same ends, another path between them
    main(["interpolate", "--run", str(tiny_run), "--class", "2", "--seeds", "0,1", "--space", "w"])
    assert (tiny_run / "interpolations" / "class2-seeds0-1-w.png").is_file()


@pytest.mark.parametrize("arguments, message", [
    (["--class", "purple", "--seeds", "0,1"], "unknown class 'purple'"),
    (["--class", "9", "--seeds", "0,1"], "class 9 out of range"),
    (["--class", "grey", "--seeds", "4"], "need at least 2 seeds"),
    (["--class", "grey", "--seeds", "0,x"], "comma-separated integers"),
])
def test_interpolate_bad_arguments_are_one_clear_line(tiny_run, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["interpolate", "--run", str(tiny_run), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1

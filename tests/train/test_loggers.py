"""`train.logger`: TensorBoard and W&B (offline) mirror stats.jsonl and the sample grids."""

import json
import struct
import sys
from pathlib import Path

import pytest
from PIL import Image

from gatgan.train.loggers import build_logger, scalars, wandb_run_id
from gatgan.train.rundir import read_stats
from gatgan.train.trainer import train

from tinyrun import tiny_config


def test_scalars_keep_finite_numbers_only():
    record = {"step": 3, "kimg": 0.036, "loss/D": 1.5, "fid": None, "nan": float("nan"), "flag": True, "note": "x"}
    assert scalars(record) == {"kimg": 0.036, "loss/D": 1.5}


def test_tensorboard_mirrors_stats_and_samples(tiny_data, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = tiny_config(tiny_data, tmp_path, **{"train.logger": "tensorboard"})
    train(config, progress=False)
    stats = read_stats(config.run_dir / "stats.jsonl")
    events = event_accumulator.EventAccumulator(str(config.run_dir / "tensorboard"),
                                                size_guidance={event_accumulator.SCALARS: 0,
                                                               event_accumulator.IMAGES: 0})
    events.Reload()
    for key in ("loss/D", "loss/G", "kimg"):
        logged = {event.step: event.value for event in events.Scalars(key)}
        assert sorted(logged) == [record["step"] for record in stats]
        for record in stats:
            assert logged[record["step"]] == pytest.approx(record[key], rel=1e-6)
    images = events.Images("samples")
    assert [image.step for image in images] == [3, 6]  # train.sample_every=3, 6 steps
    with Image.open(config.run_dir / "samples" / "00000006.png") as grid:
        assert (images[-1].width, images[-1].height) == grid.size


def test_wandb_offline_writes_a_run_with_the_history(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb-dir"),
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}.items():
        monkeypatch.setenv(name, value)
    config = tiny_config(tiny_data, tmp_path / "runs", **{"train.logger": "wandb"})
    train(config, progress=False)
    run_id = wandb_run_id(config.run_dir)
    runs = list(tmp_path.rglob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, sorted(map(str, tmp_path.rglob("*")))
    history = {int(row["_step"]): row for row in wandb_history(runs[0] / f"run-{run_id}.wandb")}
    stats = read_stats(config.run_dir / "stats.jsonl")
    assert sorted(history) == [record["step"] for record in stats]
    for record in stats:
        for key in ("loss/D", "loss/G", "kimg"):
            assert history[record["step"]][key] == pytest.approx(record[key], rel=1e-6)
    assert [step for step, row in sorted(history.items()) if "samples/path" in row] == [3, 6]
    assert len(list((runs[0] / "files").rglob("samples_*.png"))) == 2  # the logged sample grids


def wandb_history(path: Path, block: int = 32768) -> list[dict]:
    """The history rows of an offline run's .wandb file: after a 7-byte header, LevelDB log records
    (4-byte crc, 2-byte length, 1-byte type; 32 KiB blocks) of `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2

    data, rows, pos, chunk = path.read_bytes(), [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.mark.parametrize("kind,package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_says_what_to_install(tiny_data, tmp_path, monkeypatch, kind, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    config = tiny_config(tiny_data, tmp_path, **{"train.logger": kind})
    with pytest.raises(ImportError, match=f"^train.logger={kind} needs {package}: pip install 'gatgan\\[logging\\]'$"):
        build_logger(config, tmp_path)

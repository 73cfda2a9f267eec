"""A user's mistake, a damaged file, an unwritable folder or a full disk is one line
`gatgan <command>: error: ...` and a non-zero exit; a bug in gatgan keeps its traceback."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import tiny_overrides

from gatgan.cli import main, model_files
from gatgan.train.config import Config, config_text


def _fail(argv: list[str], capsys, code: int = 2) -> str:
    """Runs the CLI, expecting it to exit with `code` after one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _fake_checkpoint(root: Path, weights: bytes, card: str | None = None) -> Path:
    """A checkpoint folder of the older layout (no checksums), holding the given generator bytes."""
    folder = root / "checkpoints" / "00000003"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_text(Config()))
    (folder / "data.json").write_text(card or json.dumps(
        {"latent_shape": [1, 8, 8], "class_names": ["a"], "scaling": {"shift": [0.0], "scale": [1.0]}}))
    (folder / "generator_ema.safetensors").write_bytes(weights)
    return folder


def test_a_damaged_safetensors_file_is_named_in_one_line(tmp_path, capsys):
    checkpoint = _fake_checkpoint(tmp_path, b"\x00not a safetensors file" * 4)
    line = _fail(["sample", "--run", str(checkpoint)], capsys)
    assert line.startswith("gatgan sample: error: ")
    assert f"{checkpoint / 'generator_ema.safetensors'} is damaged or not a safetensors file" in line


def test_a_library_error_without_a_file_points_to_debug(tmp_path, capsys):
    checkpoint = _fake_checkpoint(tmp_path, b"\x00" * 8, card='{"latent_shape": ')
    line = _fail(["sample", "--run", str(checkpoint)], capsys)
    assert "(JSONDecodeError); `gatgan --debug sample ...` shows where" in line


@pytest.mark.parametrize("code, expected", [
    (errno.ENOSPC, "disk full while writing {file}: free space and re-run (the run resumes from its last checkpoint)"),
    (errno.EROFS, "cannot write {file}: read-only file system; choose another run.dir (or run.name)"),
    (errno.EACCES, "cannot access {file}: permission denied; check its permissions, or choose another run.dir"),
])
def test_a_refused_write_is_one_line_naming_the_file_and_what_to_do(tiny_data, tmp_path, monkeypatch, capsys,
                                                                    code, expected):
    file = tmp_path / "tiny" / "data.json"

    def refuse(run_dir, data):
        raise OSError(code, os.strerror(code), str(file))

    monkeypatch.setattr("gatgan.train.trainer.write_data_card", refuse)
    line = _fail(["train", "-c", "fmnist", *tiny_overrides(tiny_data, tmp_path, **{"loss.repa.teacher": ""})], capsys)
    assert line.startswith(f"gatgan train: error: {expected.format(file=file)}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0o555) folder anyway")
def test_a_read_only_run_dir_is_one_line(tiny_data, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        line = _fail(["train", "-c", "fmnist", *tiny_overrides(tiny_data, locked / "runs")], capsys)
    finally:
        locked.chmod(0o755)
    assert "permission denied" in line and str(locked) in line and "choose another run.dir" in line


def test_an_invalid_setting_stops_train_before_anything_is_written(tmp_path, capsys):
    line = _fail(["train", "-c", "fmnist", f"run.dir={tmp_path}", "train.kimg=-1"], capsys)
    assert line == "gatgan train: error: train.kimg must be > 0, got -1"
    assert list(tmp_path.iterdir()) == []


def test_a_preset_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  kimg: [1,\n")
    assert "bad.yaml is not valid YAML (line 3, column 1)" in _fail(["train", "-c", str(tmp_path / "bad.yaml")],
                                                                   capsys)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "sample", "--run", str(tmp_path)])
    monkeypatch.setenv("GATGAN_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["sample", "--run", str(tmp_path)])


def _raising(error: BaseException):
    def command(args):
        raise error
    return command


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(model_files, "_models", _raising(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        main(["models"])


def test_ctrl_c_is_a_short_message_and_exit_code_130(monkeypatch, capsys):
    monkeypatch.setattr(model_files, "_models", _raising(KeyboardInterrupt()))
    assert _fail(["models"], capsys, code=130) == "gatgan models: error: interrupted"


def test_a_reader_that_leaves_early_gets_no_error_message():
    """`gatgan models | head -1`: the pipe closes under the writer, which stops without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "gatgan.cli", "models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--run", "r", "--num", "0"], "argument --num: must be >= 1, got 0"),
    (["sample", "--run", "r", "--batch-size", "-2"], "argument --batch-size: must be >= 1, got -2"),
    (["sample", "--run", "r", "--num", "many"], "argument --num: expected an integer, got 'many'"),
    (["sample", "--run", "r", "--truncation", "nan"], "argument --truncation: must be a finite number, got 'nan'"),
    (["sample", "--run", "r", "--guidance", "inf"], "argument --guidance: must be a finite number, got 'inf'"),
    (["eval", "--run", "r", "--num", "0"], "argument --num: must be >= 1, got 0"),
    (["eval", "--run", "r", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["analyze", "--run", "r", "--out", "o", "--num", "-1"], "argument --num: must be >= 1, got -1"),
    (["analyze", "--run", "r", "--out", "o", "--truncations", "0,x"], "argument --truncations: expected a number"),
    (["analyze", "--run", "r", "--out", "o", "--truncation-samples", "0"], "argument --truncation-samples: must be"),
    (["prepare", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["prepare", "--workers", "-2"], "argument --workers: must be >= -1, got -2"),
])
def test_bad_numbers_are_refused_by_the_argument_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"gatgan {argv[0]}: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, warned", [
    (["sample", "--truncation", "1.5"], "1.5"),
    (["eval", "--truncation", "-0.5"], "-0.5"),
    (["analyze", "--out", "o", "--truncations", "0,1.2,2"], "1.2, 2"),
    (["sample", "--truncation", "0.7"], None),
])
def test_truncation_outside_0_1_is_accepted_with_a_warning(argv, warned, tmp_path, capsys):
    with pytest.raises(SystemExit):  # the run holds no checkpoint
        main([argv[0], "--run", str(tmp_path), *argv[1:]])
    err = capsys.readouterr().err
    assert ("warning: truncation" in err) == (warned is not None)
    if warned:
        assert f"gatgan {argv[0]}: warning: truncation {warned} is outside [0, 1]" in err

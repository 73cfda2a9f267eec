from pathlib import Path

import pytest

from gatgan.cli import main
from gatgan.config_reference import REGENERATE, entries, field_comments
from gatgan.train.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _flatten(values: dict, prefix: str = "") -> list[str]:
    return [key for name, value in values.items()
            for key in (_flatten(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name])]


@pytest.fixture(scope="module")
def by_key() -> dict:
    return {entry.key: entry for entry in entries()}


def test_docs_config_md_is_up_to_date(capsys):
    """CI fails when a field, default, range or comment changes without regenerating the doc."""
    main(["config", "--markdown"])
    if capsys.readouterr().out != DOC.read_text(encoding="utf-8"):  # the whole-file diff would bury the fix
        pytest.fail(f"docs/config.md is stale: regenerate it with `{REGENERATE}` (from the repository root)")


def test_every_key_appears_exactly_once():
    keys = [entry.key for entry in entries()]
    assert sorted(keys) == sorted(_flatten(Config().to_dict()))
    assert len(keys) == len(set(keys))
    markdown = DOC.read_text(encoding="utf-8")
    assert all(markdown.count(f"| `{key}` |") == 1 for key in keys)


def test_comments_and_ranges_are_read_from_the_source(by_key):
    assert "thousands of real images" in by_key["train.kimg"].comment
    assert by_key["optim.base_lr"].range == "> 0" and by_key["optim.base_lr"].type == "float"
    # a block of comment lines above the field, joined into one line
    assert by_key["optim.ema_kimg"].comment.startswith("StyleGAN2's EMA instead: a half-life")
    assert "\n" not in by_key["optim.ema_kimg"].comment and "#" not in by_key["optim.ema_kimg"].comment
    # a section's own dataclass (loss.penalty is gatgan.losses.objective.PenaltySettings)
    assert by_key["loss.penalty.every"].comment.startswith("Lazy regularisation")
    assert by_key["optim.ema_rampup"].comment == ""  # below a comment block that belongs to ema_kimg
    assert by_key["run.dir"].range == ""


def test_field_comments_without_source_are_empty():
    assert field_comments(type("Built", (), {})) == {}


def test_preset_values_are_marked_where_they_differ(capsys):
    main(["config", "-c", "fmnist", "train.seed=0"])
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines() if line[:2] in ("* ", "  ")}
    assert lines["train.kimg"].startswith("* ") and "51200.0" in lines["train.kimg"]
    assert lines["train.seed"].startswith("  ")

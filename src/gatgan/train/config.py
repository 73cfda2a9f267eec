"""Run configuration: plain dataclasses, YAML presets and dotted `key=value` overrides.

Every number that comes from the paper or the authors' code has its default here, once, with the
REFERENCE section it comes from. A run saves its resolved config, so `gatgan train` on an existing
run directory resumes with exactly the same settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..eval.suite import METRIC_KINDS
from ..losses.augment import DiffAugment
from ..losses.mng import MNG
from ..losses.objective import PenaltySettings
from ..losses.repa import REPASettings

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RunConfig:
    name: str = "fmnist"
    dir: str = "runs"


@dataclass
class DataConfig:
    path: str = "data/fmnist-vae"  # a directory written by `gatgan prepare`
    workers: int = -1  # loader processes per training process; -1: the spare cores (0 on small machines)
    xflip: bool = True  # read the flipped image's moments half the time, when `prepare --flip` stored them


@dataclass
class ModelConfig:
    generator: str = "GAT-B/2"
    discriminator: str = "GAT-B/2"  # chosen independently of G (REFERENCE §2c)
    z_dim: int = 64  # REFERENCE §2b
    mapping_lr_mult: float = 0.01  # REFERENCE §2b: StyleGAN's equalised lr, the mapping learns 100x slower


@dataclass
class LossConfig:
    # The loss components are configured by their own dataclasses (defaults: REFERENCE §3b-§3d).
    mng: MNG = field(default_factory=MNG)
    augment: DiffAugment = field(default_factory=DiffAugment)
    penalty: PenaltySettings = field(default_factory=PenaltySettings)
    repa: REPASettings = field(default_factory=REPASettings)


@dataclass
class OptimConfig:
    base_lr: float = 2e-4  # REFERENCE §3g: eta_base at C_base
    base_width: int = 768  # C_base (GAT-B)
    width_aware: bool = True  # lr = base_lr * base_width / width, separately for G and D
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global norm, G and D
    ema_decay: float = 0.999  # per step, no warm-up (REFERENCE §3g); used when ema_kimg is 0
    # StyleGAN2's EMA instead: a half-life of ema_kimg thousand images, growing with training as
    # min(ema_kimg, ema_rampup * images seen so far) when ema_rampup > 0, so that a short run does
    # not average in its untrained start. 0 keeps the per-step ema_decay.
    ema_kimg: float = 0.0
    ema_rampup: float = 0.0


@dataclass
class TrainConfig:
    kimg: float = 51200.0  # duration in thousands of real images (50K iterations at batch 512 ~ 20 epochs)
    global_batch: int = 512  # REFERENCE §3g; independent of the number of devices
    batch_per_device: int = 0  # 0: global_batch / world_size (no accumulation)
    seed: int = 0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; GPUs)
    grad_checkpointing: bool = False
    device: str = "auto"  # "auto", "cpu" or "cuda"
    log_every: int = 50  # steps
    sample_every: int = 1250
    # D-teacher alignment (CKNNA, CKA) when a REPA teacher is set, at logging steps that are
    # multiples of it; 0 = never
    align_every: int = 1250
    # z-sensitivity and discriminator-overfitting diagnostics (gatgan.train.diagnostics), at logging
    # steps that are multiples of it; 0 = never
    diagnose_every: int = 1250
    checkpoint_every: int = 1250
    keep_checkpoints: int = 3  # older step folders are deleted; 0 keeps all
    threads: int = 0  # torch CPU threads; 0 leaves torch's default


@dataclass
class EvalConfig:
    every: int = 0  # steps between in-training evaluations, at logging steps; 0 = never
    metric: str = "auto"  # auto (domain on the embedded data, inception otherwise), domain or inception
    samples: int = 5000  # FID-5K, as the authors' in-training metric (REFERENCE §5)
    truncation: float = 1.0  # none (the authors' in-training psi = 0 in their convention)
    inception: str = ""  # the FID Inception weights file (weights-inception-2015-12-05-6726825d.pth)
    reference: str = ""  # an ADM reference batch .npz or a prepared data directory; "" = data.path
    batch_size: int = 250

    def __post_init__(self) -> None:
        if self.metric not in METRIC_KINDS:
            raise ValueError(f"eval.metric must be one of {METRIC_KINDS}, got {self.metric!r}")
        if self.every < 0 or self.samples < 2:
            raise ValueError("eval.every must be >= 0 and eval.samples >= 2")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        """Alignment and evaluation run at logging steps only; another cadence would be skipped silently."""
        for key, every in (("train.align_every", self.train.align_every),
                           ("train.diagnose_every", self.train.diagnose_every), ("eval.every", self.eval.every)):
            if self.train.log_every > 0 and every % self.train.log_every:
                raise ValueError(f"{key}={every} must be a multiple of train.log_every={self.train.log_every} "
                                 "(it runs at logging steps)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name


def config_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}; "
                         f"valid keys under '{where or '.'}': {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = config_from_dict(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, str)):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if isinstance(default, str) and value is None:  # `key=` on the command line
        return ""
    if type(value) is not type(default):
        raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}")
    return value


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset shipped with gatgan (e.g. `fmnist`, `ablations/mng-off`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    available = ", ".join(sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix()
                                 for p in PRESET_DIR.rglob("*.yaml")))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a preset ({available})")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`train.kimg=100` style overrides; values are parsed as YAML scalars."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form section.key=value")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def read_preset(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's values. `base: <preset>` at the top of a YAML file inherits another preset, so
    an ablation states only what it changes."""
    path = resolve_preset(name_or_path).resolve()
    if path in _seen:
        raise ValueError(f"config {path} inherits itself (base chain: {' -> '.join(map(str, _seen))})")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must be a mapping")
    base = values.pop("base", None)
    return _merge(read_preset(str(base), (*_seen, path)), values) if base else values


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    values = read_preset(str(preset)) if preset else {}
    return config_from_dict(Config, apply_overrides(values, overrides or []), "")


def read_config(path: Path) -> Config:
    """A config saved by `save_config` (in a run or checkpoint directory)."""
    return config_from_dict(Config, yaml.safe_load(Path(path).read_text()), "")


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

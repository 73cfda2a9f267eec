"""Run configuration: plain dataclasses, YAML presets and dotted `key=value` overrides.

Every number that comes from the paper or the authors' code has its default here, once, with the
docs/method.md section that explains it. A run saves its resolved config, so `gatgan train` on an existing
run directory resumes with exactly the same settings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..eval.suite import METRIC_KINDS
from ..losses.augment import AUGMENTATIONS, COLOR_FORMS, DiffAugment
from ..losses.mng import MNG, MNG_FORMS, MNG_SCHEDULES
from ..losses.objective import PenaltySettings
from ..losses.penalty import PENALTY_MODES
from ..losses.repa import REPASettings
from ..models.registry import MODEL_NAMES
from .optim import LR_DECAYS

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
    discriminator: str = "GAT-B/2"  # chosen independently of G (docs/method.md §1.2)
    z_dim: int = 64  # docs/method.md §2.1
    mapping_lr_mult: float = 0.01  # docs/method.md §2.1: StyleGAN's equalised lr, the mapping learns 100x slower


@dataclass
class LossConfig:
    # The loss components are configured by their own dataclasses (defaults: docs/method.md §4, §5).
    mng: MNG = field(default_factory=MNG)
    augment: DiffAugment = field(default_factory=DiffAugment)
    penalty: PenaltySettings = field(default_factory=PenaltySettings)
    repa: REPASettings = field(default_factory=REPASettings)


@dataclass
class OptimConfig:
    base_lr: float = 2e-4  # docs/method.md §6: eta_base at C_base
    base_width: int = 768  # C_base (GAT-B)
    width_aware: bool = True  # lr = base_lr * base_width / width, separately for G and D
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global norm, G and D
    ema_decay: float = 0.999  # per step, no warm-up (docs/method.md §6); used when ema_kimg is 0
    # StyleGAN2's EMA instead: a half-life of ema_kimg thousand images, growing with training as
    # min(ema_kimg, ema_rampup * images seen so far) when ema_rampup > 0, so that a short run does
    # not average in its untrained start. 0 keeps the per-step ema_decay.
    ema_kimg: float = 0.0
    ema_rampup: float = 0.0
    # Learning-rate decay, off in the paper's recipe (constant lr): "cosine" or "linear" from 1 at
    # lr_decay_start (a fraction of train.kimg) down to lr_final (a fraction of the lr) at train.kimg,
    # then flat. It follows train.kimg: a run resumed with a larger budget continues at the rate the
    # new budget gives at that point.
    lr_decay: str = "none"
    lr_decay_start: float = 0.5  # where the decay begins, as a fraction of train.kimg
    lr_final: float = 0.1  # the lr at train.kimg (and after it), as a fraction of the starting lr


@dataclass
class TrainConfig:
    kimg: float = 51200.0  # duration in thousands of real images (100K iterations at batch 512 ~ 40 epochs)
    global_batch: int = 512  # docs/method.md §6; independent of the number of devices
    batch_per_device: int = 0  # 0: global_batch / world_size (no accumulation)
    seed: int = 0  # initial weights, data order and every noise draw
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; GPUs)
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA, like the authors' --allow-tf32 (no effect on CPUs)
    grad_checkpointing: bool = False
    # torch.compile of every transformer block of G and D (the same maths, fewer kernels). Falls back
    # to eager, saying so, when the compiler toolchain is missing or a block fails to compile. On a
    # CPU, fmnist's GAT-Micro/2 iteration takes 0.71-0.77x the eager one after ~80 s of compilation
    # (a first run; later ones reuse inductor's cache).
    compile: bool = False
    # "ddp" replicates G and D on every device; "fsdp" shards them (FSDP2, per transformer block) for
    # models too large to replicate. Both write the same full checkpoints, so a run may switch on resume.
    strategy: str = "ddp"
    timeout_minutes: float = 90.0  # collectives' timeout (the authors' 5400 s): long evaluations run on rank 0
    # One generator forward per iteration instead of two (the same maths; without gradient
    # accumulation only, as it holds G's activations through the D step). Off by default: on a CPU
    # it measured 1.01x the two-pass step for GAT-S/2 but 0.95x for the fmnist preset's GAT-Micro/2,
    # where it is on (benchmarks/step_variants.py); unmeasured on GPUs
    single_generator_pass: bool = False
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
    # Local processes that share each batch, started by `gatgan train` itself (data parallel, the
    # group `torchrun --standalone --nproc_per_node N` would make; the global batch and the maths stay
    # the same). On a CPU a small model gains more from a second process than from a second thread
    # (benchmarks/cpu_processes.py). Under torchrun or srun the launcher's count wins
    processes: int = 1
    # A step whose loss or gradient norm is not finite is not applied: the run goes back to its last
    # checkpoint with every learning rate multiplied by divergence_lr_backoff, at most
    # divergence_retries times per process, then stops with a message naming the step
    divergence_retries: int = 3
    divergence_lr_backoff: float = 0.5
    # "none", or a mirror of stats.jsonl and the sample grids in "tensorboard" (the run's tensorboard/
    # folder) or "wandb" (project gatgan; offline with WANDB_MODE=offline), written by the main process;
    # both need `pip install 'gatgan[logging]'`
    logger: str = "none"


@dataclass
class EvalConfig:
    every: int = 0  # steps between in-training evaluations, at logging steps; 0 = never
    metric: str = "auto"  # auto (domain on the embedded data, inception otherwise), domain or inception
    samples: int = 5000  # FID-5K, as the authors' in-training metric (docs/method.md §7)
    truncation: float = 1.0  # none (the authors' in-training psi = 0 in their convention)
    inception: str = ""  # the FID Inception weights file (weights-inception-2015-12-05-6726825d.pth)
    reference: str = ""  # an ADM reference batch .npz or a prepared data directory; "" = data.path
    batch_size: int = 250


# ------------------------------------------------------------------------------------ limits
@dataclass(frozen=True)
class Rule:
    """What a setting accepts: `text` completes "<key> must be ...", `accepts` tests a value."""

    text: str
    accepts: Callable[[Any], bool]


def _number(text: str, accepts: Callable[[float], bool]) -> Rule:
    """NaN and infinities are refused everywhere: no setting means them, and they fail late (inf kimg)."""
    return Rule(text, lambda value: math.isfinite(value) and accepts(value))


def _one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda value: value in choices)


POSITIVE = _number("> 0", lambda v: v > 0)
NON_NEGATIVE = _number(">= 0", lambda v: v >= 0)
AT_LEAST_ONE = _number(">= 1", lambda v: v >= 1)
PROBABILITY = _number("in [0, 1]", lambda v: 0 <= v <= 1)
BELOW_ONE = _number("in [0, 1)", lambda v: 0 <= v < 1)
UP_TO_ONE = _number("in (0, 1]", lambda v: 0 < v <= 1)

# The limit of every setting that has one, by dotted key; a value outside would otherwise fail
# late (a ZeroDivisionError mid-run) or silently train something else. For cadences ("*_every")
# 0 means never where the comment of the field says so, and >= 1 where a run needs them.
RULES: dict[str, Rule] = {
    "run.name": Rule("a non-empty name", bool),
    "data.workers": _number(">= -1 (-1: the spare cores)", lambda v: v >= -1),
    "model.generator": _one_of(MODEL_NAMES),
    "model.discriminator": _one_of(MODEL_NAMES),
    "model.z_dim": AT_LEAST_ONE,
    "model.mapping_lr_mult": POSITIVE,
    "loss.mng.num_levels": AT_LEAST_ONE,
    "loss.mng.schedule": _one_of(MNG_SCHEDULES),
    "loss.mng.form": _one_of(MNG_FORMS),
    "loss.mng.min_signal": UP_TO_ONE,
    "loss.mng.floor": BELOW_ONE,
    "loss.augment.policy": Rule(f"comma-separated names from {', '.join(AUGMENTATIONS)}",
                                lambda value: set(filter(None, value.split(","))) <= set(AUGMENTATIONS)),
    "loss.augment.color_prob": PROBABILITY,
    "loss.augment.color": _one_of(COLOR_FORMS),
    "loss.augment.translation_ratio": PROBABILITY,
    "loss.augment.cutout_ratio": PROBABILITY,
    "loss.augment.flip_prob": PROBABILITY,
    "loss.penalty.mode": _one_of(PENALTY_MODES),
    "loss.penalty.sigma": POSITIVE,
    "loss.penalty.gamma_r1": NON_NEGATIVE,
    "loss.penalty.gamma_r2": NON_NEGATIVE,
    "loss.penalty.every": AT_LEAST_ONE,
    "loss.repa.weight": NON_NEGATIVE,
    "optim.base_lr": POSITIVE,
    "optim.base_width": AT_LEAST_ONE,
    "optim.beta1": BELOW_ONE,
    "optim.beta2": BELOW_ONE,
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip": POSITIVE,
    "optim.ema_decay": PROBABILITY,
    "optim.ema_kimg": NON_NEGATIVE,
    "optim.ema_rampup": NON_NEGATIVE,
    "optim.lr_decay": _one_of(LR_DECAYS),
    "optim.lr_decay_start": BELOW_ONE,
    "optim.lr_final": UP_TO_ONE,
    "train.kimg": POSITIVE,
    "train.global_batch": AT_LEAST_ONE,
    "train.batch_per_device": _number(">= 0 (0: global_batch / number of devices)", lambda v: v >= 0),
    "train.seed": NON_NEGATIVE,
    "train.precision": _one_of(("fp32", "bf16")),
    "train.device": _one_of(("auto", "cpu", "cuda")),
    "train.strategy": _one_of(("ddp", "fsdp")),
    "train.logger": _one_of(("none", "tensorboard", "wandb")),
    "train.processes": AT_LEAST_ONE,
    "train.log_every": AT_LEAST_ONE,
    "train.sample_every": AT_LEAST_ONE,
    "train.align_every": NON_NEGATIVE,
    "train.diagnose_every": NON_NEGATIVE,
    "train.checkpoint_every": AT_LEAST_ONE,
    "train.keep_checkpoints": NON_NEGATIVE,
    "train.threads": NON_NEGATIVE,
    "train.divergence_retries": NON_NEGATIVE,
    "train.divergence_lr_backoff": UP_TO_ONE,
    "train.timeout_minutes": POSITIVE,
    "eval.every": NON_NEGATIVE,
    "eval.metric": _one_of(METRIC_KINDS),
    "eval.samples": _number(">= 2", lambda v: v >= 2),
    "eval.truncation": _number("a finite number", lambda v: True),
    "eval.batch_size": AT_LEAST_ONE,
}


def check_setting(key: str, value: Any) -> Any:
    """`value`, if the setting `key` accepts it; else a ValueError naming the key, its limit and the value."""
    rule = RULES.get(key)
    if rule is not None and not rule.accepts(value):
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise ValueError(f"{key} must be {rule.text}, got {shown}")
    return value


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
        """Checked whole when built, so that `gatgan train` stops before it creates or writes anything."""
        for key in RULES:
            check_setting(key, functools.reduce(getattr, key.split("."), self))
        self._check_combinations()

    def _check_combinations(self) -> None:
        train = self.train
        if train.batch_per_device and train.global_batch % train.batch_per_device:
            raise ValueError(f"train.global_batch={train.global_batch} must be a multiple of "
                             f"train.batch_per_device={train.batch_per_device}")
        # Alignment and evaluation run at logging steps only; another cadence would be skipped silently.
        for key, every in (("train.align_every", train.align_every), ("train.diagnose_every", train.diagnose_every),
                           ("eval.every", self.eval.every)):
            if every % train.log_every:
                raise ValueError(f"{key}={every} must be a multiple of train.log_every={train.log_every} "
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
        else:  # checked here too, before a section's own constructor rejects it without naming the key
            kwargs[name] = check_setting(f"{where}{name}", _coerce(value, default, f"{where}{name}"))
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
        node[leaf] = _parse_yaml(raw, f"override {override!r}")
    return values


def _parse_yaml(text: str, source: str) -> Any:
    """PyYAML's errors span several lines and name "<unicode string>": this one names `source` and
    the line, in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None


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
    values = _parse_yaml(path.read_text(), f"config {path}") or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must be a mapping")
    base = values.pop("base", None)
    return _merge(read_preset(str(base), (*_seen, path)), values) if base else values


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    values = read_preset(str(preset)) if preset else {}
    return config_from_dict(Config, apply_overrides(values, overrides or []), "")


def parse_config(text: str) -> Config:
    return config_from_dict(Config, yaml.safe_load(text), "")


def read_config(path: Path) -> Config:
    """A config saved by `config_text` (in a run or checkpoint directory); errors name the file."""
    try:
        return parse_config(Path(path).read_text())
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None


def config_text(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

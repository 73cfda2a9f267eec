"""The GAT training loop: per iteration one D step (with REPA when a teacher is set), then one G
step on the same real batch and the same z (docs/method.md §4.1), an EMA update, and periodic logs,
D-teacher alignment scores, sample grids and checkpoints.

Re-running the same command resumes: the step counter, networks, EMA, optimisers, the per-class
w average and the random stream of z and the losses come back from the latest checkpoint, and the
data (order, posterior noise, flips) is a function of the step (`gatgan.data.loader`), so the
continuation is exactly the uninterrupted run.
"""

from __future__ import annotations

import gc
import json
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..data.card import DATA_CARD, RUN_TOKENIZER, write_data_card
from ..faults import fault_point
from ..hardware import allow_tf32
from ..files import write_if_changed
from ..data.latents import BatchSchedule, LatentDataset
from ..data.loader import StepBatches, step_loader
from ..encoders import Teacher, TeacherFeatures, load_teacher
from ..eval.inception import check_inception_file
from ..eval.suite import resolve_metric_kind, separate_test_split
from ..images import save_grid
from ..losses.objective import GATObjective
from ..losses.repa import REPAInput, REPATargets
from ..models import build_discriminator, build_generator
from ..sample import Sampler
from ..tokenizers import load_tokenizer
from .checkpoint import latest_checkpoint, load_network, load_state, save_checkpoint
from .config import Config, config_text, parse_config
from .distributed import DistributedEnv, init_distributed, mean_across_processes
from .diagnostics import DiversityMonitor, OverfitMonitor
from .ema import EMA, ema_decay
from .fsdp import (clip_grad_norm, ema_source, full_optimizer_state, full_weights, gradient_sync, load_optimizer_state,
                   load_weights, shard)
from .evaluation import InTrainingEvaluation
from .monitor import AlignmentMonitor
from .compile import compile_blocks
from .optim import build_optimizer, lr_factor, width_aware_lr
from .loggers import Logger, NoLogger, build_logger, check_logger
from .rundir import RunLock, append_stats, read_or_restore, truncate_stats

# Settings that may change when a run is resumed (durations and cadences); anything else must
# match the saved config, or the continuation would silently be a different experiment.
# data.path may change (data moved) because the data card of the run is checked instead.
# The whole eval section only measures the run, so all of it may change.
RESUMABLE_CHANGES = {
    "train.kimg", "train.log_every", "train.sample_every", "train.align_every", "train.diagnose_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.threads", "train.tf32", "train.single_generator_pass",
    "train.compile", "train.timeout_minutes", "train.strategy", "train.logger",
    "train.batch_per_device", "train.device", "train.divergence_retries", "train.divergence_lr_backoff",
    "data.path", "data.workers"}
RESUMABLE_SECTIONS = ("eval.",)
GRID_COLUMNS = 10
GRID_MAX_ROWS = 16
CONFIG_FILE = "config.yaml"


class NonFiniteStep(Exception):
    """A step produced a non-finite gradient norm; it was not applied."""


class TrainingDiverged(RuntimeError):
    """The run kept producing non-finite steps after its allowed roll-backs."""


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: Config, new: Config) -> None:
    old_values, new_values = _flatten(saved.to_dict()), _flatten(new.to_dict())
    changed = sorted(k for k in new_values if old_values.get(k) != new_values[k] and k not in RESUMABLE_CHANGES
                     and not k.startswith(RESUMABLE_SECTIONS))
    if changed:
        details = "; ".join(f"{k}: {old_values.get(k)!r} -> {new_values[k]!r}" for k in changed)
        raise ValueError(f"the run directory already holds a run with different settings ({details}). "
                         "Choose another run.name, or only change: "
                         + ", ".join([*sorted(RESUMABLE_CHANGES), *(f"{p}*" for p in RESUMABLE_SECTIONS)]))


@dataclass
class BatchPlan:
    global_batch: int
    per_device: int
    accumulation: int

    @classmethod
    def resolve(cls, global_batch: int, batch_per_device: int, world_size: int) -> "BatchPlan":
        per_device = batch_per_device or global_batch // world_size
        if per_device <= 0 or global_batch % (per_device * world_size):
            raise ValueError(f"train.global_batch={global_batch} must be a multiple of "
                             f"train.batch_per_device={per_device} x world size {world_size}")
        return cls(global_batch, per_device, global_batch // (per_device * world_size))


class Trainer:
    def __init__(self, config: Config, env: DistributedEnv | None = None, progress: bool = True):
        self.config, self.progress = config, progress
        self.env = env or init_distributed(config.train.device, config.train.timeout_minutes)
        self.device = self.env.device
        allow_tf32(self.device, config.train.tf32)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.run_dir = config.run_dir
        self.data = LatentDataset(config.data.path)
        # the settings and assets are checked before the run directory is created or locked
        self.plan = BatchPlan.resolve(config.train.global_batch, config.train.batch_per_device, self.env.world_size)
        self.teacher = self._load_teacher()
        self._check_evaluation_assets()
        check_logger(config.train.logger)
        if self.sharded:
            self._check_shardable()
        self._lock = RunLock(self.run_dir) if self.env.is_main else None
        self.logger: Logger = NoLogger()  # train.logger, on the main process, once the run directory is ready
        try:
            self._setup()
            if self.env.is_main:
                self.logger = build_logger(config, self.run_dir)
        except BaseException:
            self.release_lock()
            raise

    def _setup(self) -> None:
        config = self.config
        # the newest intact checkpoint (damaged ones are skipped, saying so), looked up once: it is hashed
        checkpoint = latest_checkpoint(self.run_dir, quiet=not self.env.is_main)
        self._prepare_run_dir(checkpoint)
        self.schedule = BatchSchedule(len(self.data), self.plan.global_batch, config.train.seed)
        self.total_steps = math.ceil(config.train.kimg * 1000 / self.plan.global_batch)
        self._build_networks()
        repa = config.loss.repa
        targets = REPATargets(self.teacher, config.loss.augment, self.data.latent_size) if self.repa_on else None
        self.objective = GATObjective(config.loss.augment, config.loss.mng, config.loss.penalty, targets, repa.weight)
        self._noise_seed = config.train.seed * 1_000_003 + self.env.rank
        self.noise_rng = torch.Generator(self.device).manual_seed(self._noise_seed)  # z, augmentation, MNG, penalty
        self._batches, self._batches_step = None, -1
        self._monitor: AlignmentMonitor | None = None
        self._diagnostics: tuple[DiversityMonitor, OverfitMonitor | None] | None = None
        self._evaluation: InTrainingEvaluation | None = None
        self.step = 0
        self._rollbacks = 0
        self._lr_scale = 1.0  # the divergence back-offs so far, applied on top of optim.lr_decay
        self._resume(checkpoint)
        if self.env.is_main:  # lines past the checkpoint (or of attempts killed before one) are redone
            truncate_stats(self.stats_file, self.step)
        self.start_step = self.step
        if self.sharded:  # FSDP2 modules are called directly
            self.G_ddp, self.D_ddp = self.G, self.D
            return
        # Buffers are not broadcast: the only mutable one (w_avg) is all-reduced by the generator.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
            self.G_ddp = DDP(self.G, broadcast_buffers=False)
            self.D_ddp = DDP(self.D, broadcast_buffers=False)

    # ---------------------------------------------------------------- setup
    def _prepare_run_dir(self, copies: Path | None) -> None:
        """Checks that a run already in the directory is this one, then writes the start-up files
        (only what changed, atomically), restoring a damaged one from the checkpoint's copies."""
        if self.env.is_main:
            saved = read_or_restore(self.run_dir / CONFIG_FILE, parse_config, copies and copies / CONFIG_FILE)
            if saved is not None:
                check_resumable(saved, self.config)
            read_or_restore(self.run_dir / DATA_CARD, json.loads, copies and copies / DATA_CARD)
            write_if_changed(self.run_dir / CONFIG_FILE, config_text(self.config), "config.write")
            write_data_card(self.run_dir, self.data)
        dist.barrier()

    @property
    def repa_on(self) -> bool:
        """A teacher with weight 0 is loaded for monitoring the alignment only (the REPA-off arm)."""
        return self.teacher is not None and self.config.loss.repa.weight > 0

    def _load_teacher(self) -> Teacher | None:
        repa = self.config.loss.repa
        if not repa.teacher:
            return None
        if repa.precomputed and "translation" in self.config.loss.augment.ops:
            raise ValueError("loss.repa.precomputed: stored teacher features cannot follow DiffAugment's "
                             "translation; run the teacher online or drop translation from loss.augment.policy")
        if not self.data.has_images and not repa.precomputed:
            raise ValueError(f"REPA needs the raw images, but {self.data.path} was prepared with --no-images "
                             "(or precomputed teacher features: loss.repa.precomputed=true)")
        return load_teacher(repa.teacher, self.data.path).to(self.device).eval()

    def _initial_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """G and D with their initial weights, identical on every rank and at every call."""
        cfg, data = self.config, self.data
        shape = dict(input_size=data.latent_size, channels=data.latent_channels, num_classes=data.num_classes)
        teacher_dim = self.teacher.dim if self.repa_on else None
        torch.manual_seed(cfg.train.seed)
        G = build_generator(cfg.model.generator, num_exits=cfg.loss.mng.num_levels, z_dim=cfg.model.z_dim,
                            mapping_lr_mult=cfg.model.mapping_lr_mult,
                            teacher_dim=teacher_dim if cfg.loss.repa.align_generator else None, **shape)
        D = build_discriminator(cfg.model.discriminator, num_levels=cfg.loss.mng.num_levels,
                                teacher_dim=teacher_dim, **shape)
        return G.to(self.device), D.to(self.device)

    def _check_evaluation_assets(self) -> None:
        """The in-training FID's files, at start-up rather than at the first evaluation."""
        evaluation = self.config.eval
        if not (evaluation.every and self.env.is_main):
            return
        if evaluation.reference and not Path(evaluation.reference).exists():
            raise FileNotFoundError(f"eval.reference={evaluation.reference}: no such file or directory")
        if resolve_metric_kind(evaluation.metric, self.data.path) == "inception":
            check_inception_file(evaluation.inception or None)

    def _build_networks(self) -> None:
        cfg, o = self.config, self.config.optim
        self.G, self.D = self._initial_networks()
        self.G.grad_checkpointing = self.D.grad_checkpointing = cfg.train.grad_checkpointing
        if cfg.train.compile:
            compile_blocks([*self.G.blocks, *self.D.blocks], self.device, announce=self.env.is_main)
        self.ema = EMA(self.G, o.ema_decay)  # a full copy on every rank under either strategy
        if self.sharded:  # before the optimisers, which must hold the sharded parameters
            bf16 = cfg.train.precision == "bf16"
            self.G, self.D = shard(self.G, bf16), shard(self.D, bf16)
        self.lr_G = width_aware_lr(o.base_lr, self.G.width, o.base_width, o.width_aware)
        self.lr_D = width_aware_lr(o.base_lr, self.D.width, o.base_width, o.width_aware)
        self._build_optimizers()

    @property
    def sharded(self) -> bool:
        return self.config.train.strategy == "fsdp"

    def _check_shardable(self) -> None:
        """A sharded network runs only when every rank calls it, but the alignment and overfitting
        monitors call D on rank 0 alone."""
        cfg = self.config.train
        uses = [f"{key}=0" for key, used in (
            ("train.align_every", self.teacher is not None and cfg.align_every),
            ("train.diagnose_every", cfg.diagnose_every and separate_test_split(self.data) is not None)) if used]
        if uses:
            raise ValueError("train.strategy=fsdp cannot run the monitors that read D on one rank: "
                             f"set {', '.join(uses)}")

    def _build_optimizers(self) -> None:
        o = self.config.optim
        betas = (o.beta1, o.beta2)
        self.opt_G = build_optimizer(self.G, self.lr_G, betas, o.eps, o.weight_decay)
        self.opt_D = build_optimizer(self.D, self.lr_D, betas, o.eps, o.weight_decay)

    def _reinitialise(self) -> None:
        """Back to step 0 in place (the DDP wrappers keep their modules): initial weights, fresh
        optimisers and noise stream."""
        G, D = self._initial_networks()
        load_weights(self.G, G.state_dict())
        load_weights(self.D, D.state_dict())
        self.ema.model.load_state_dict(G.state_dict())
        self._build_optimizers()
        self.noise_rng.manual_seed(self._noise_seed)
        self.step = 0

    def _resume(self, checkpoint: Path | None) -> bool:
        """Loads `checkpoint` (None: nothing to resume); says whether it did."""
        if checkpoint is None:
            return False
        load_weights(self.G, load_network(checkpoint, "generator", self.device))
        load_weights(self.D, load_network(checkpoint, "discriminator", self.device))
        self.ema.model.load_state_dict(load_network(checkpoint, "generator_ema", self.device))
        state = load_state(checkpoint)
        load_optimizer_state(self.G, self.opt_G, state["opt_G"])
        load_optimizer_state(self.D, self.opt_D, state["opt_D"])
        self.step = int(state["step"])
        # checkpoints from before optim.lr_decay kept the back-offs only in the optimisers' own rates
        self._lr_scale = float(state["lr_scale"]) if "lr_scale" in state else \
            self.opt_G.param_groups[0]["lr"] / self.lr_G
        rng = state["rng"]
        if len(rng) == self.env.world_size:
            self.noise_rng.set_state(rng[self.env.rank]["noise"])
        elif self.env.is_main:
            print(f"resuming a {len(rng)}-process run on {self.env.world_size} processes: "
                  "the z and loss noise restart from new seeds (the data is unaffected)")
        if self.env.is_main:
            print(f"resumed from {checkpoint} at step {self.step}")
        return True

    # ---------------------------------------------------------------- one iteration
    def _autocast(self):
        enabled = self.config.train.precision == "bf16"
        if self.config.train.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be fp32 or bf16, got {self.config.train.precision!r}")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, REPAInput | None]]:
        if self._batches_step != self.step:  # first step, or the step was moved (resume)
            precomputed = self.config.loss.repa.precomputed
            steps = StepBatches(self.data, self.schedule, rank=self.env.rank, world_size=self.env.world_size,
                                accumulation=self.plan.accumulation, start_step=self.step,
                                total_steps=max(self.total_steps, self.step + 1), seed=self.config.train.seed,
                                xflip=self.config.data.xflip, with_images=self.repa_on and not precomputed,
                                with_teacher_features=self.repa_on and precomputed)
            self._batches = iter(step_loader(steps, self.config.data.workers, self.device.type == "cuda"))
        batches = []
        for _ in range(self.plan.accumulation):
            batch = next(self._batches)
            z = torch.randn(len(batch.labels), self.config.model.z_dim, generator=self.noise_rng, device=self.device)
            repa_input = None if batch.images is None else batch.images.to(self.device, non_blocking=True)
            if batch.teacher is not None:
                repa_input = tuple(TeacherFeatures(f.cls.to(self.device), f.patches.to(self.device))
                                   for f in batch.teacher)
            batches.append((batch.latents.to(self.device, non_blocking=True),
                            batch.labels.to(self.device, non_blocking=True), z, repa_input))
        self._batches_step = self.step + 1
        return batches

    def _sync_context(self, model: torch.nn.Module, micro: int):
        """Gradients are reduced only on the last micro-batch of an accumulation."""
        return gradient_sync(model, micro == self.plan.accumulation - 1)

    def _optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str,
                        stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clips and applies the gradients, unless their norm is not finite: then nothing is applied
        and NonFiniteStep names the step, the network and the non-finite losses. The norm is taken
        after the all-reduce, so every rank takes the same decision; reading it costs one device
        synchronisation per network and step."""
        norm = clip_grad_norm(model, self.config.optim.grad_clip)
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            losses = ", ".join(f"{k} = {float(v):.4g}" for k, v in stats.items() if not math.isfinite(float(v)))
            raise NonFiniteStep(f"step {self.step + 1}: the gradient norm of {name} is {float(norm)}"
                                + (f" ({losses})" if losses else ""))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def _schedule_learning_rates(self) -> None:
        """The coming step's rates: optim.lr_decay's factor times the divergence back-offs so far."""
        o = self.config.optim
        factor = lr_factor(self.step * self.plan.global_batch / 1000, self.config.train.kimg, o.lr_decay,
                           o.lr_decay_start, o.lr_final) * self._lr_scale
        for optimizer, lr in ((self.opt_G, self.lr_G), (self.opt_D, self.lr_D)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor

    def train_step(self) -> dict[str, torch.Tensor]:
        stats: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        self._schedule_learning_rates()
        batches = self._micro_batches()
        scale = 1.0 / self.plan.accumulation
        penalize = self.step % self.config.loss.penalty.every == 0
        align_G = self.G.projector is not None
        # G is not updated between the two steps, so one forward can serve both: the D step takes its
        # output detached, the G step backpropagates through it. It keeps G's activations alive during
        # the D step, so only without accumulation (whose point is memory).
        single_pass = self.config.train.single_generator_pass and self.plan.accumulation == 1
        generated = []
        for micro, (real, y, z, repa_input) in enumerate(batches):  # ---- D step
            if single_pass:
                with self._autocast():
                    generated.append(self.G_ddp(z, y, all_exits=True, update_w_avg=True, project=align_G))
                fake = (generated[-1][0] if align_G else generated[-1]).detach()
            else:
                with torch.no_grad(), self._autocast():
                    fake = self.G(z, y, all_exits=True)
            with self._sync_context(self.D_ddp, micro), self._autocast():
                loss, micro_stats = self.objective.discriminator_loss(self.D_ddp, real, fake.float(), y,
                                                                      self.noise_rng, repa_input, penalize)
                (loss * scale).backward()
            for k, v in micro_stats.items():
                stats[k] += v * scale
        stats["grad_norm/D"] = self._optimizer_step(self.D, self.opt_D, "D", stats)

        self.D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only
        for micro, (real, y, z, repa_input) in enumerate(batches):  # ---- G step, same reals and z
            with self._sync_context(self.G_ddp, micro), self._autocast():
                out = generated[micro] if single_pass else \
                    self.G_ddp(z, y, all_exits=True, update_w_avg=True, project=align_G)
                fake, projected = out if align_G else (out, None)
                loss, micro_stats = self.objective.generator_loss(self.D, real, fake.float(), y, self.noise_rng,
                                                                  projected, repa_input)
                (loss * scale).backward()
            for k, v in micro_stats.items():
                stats[k] += v * scale
        self.D.requires_grad_(True)
        stats["grad_norm/G"] = self._optimizer_step(self.G, self.opt_G, "G", stats)
        self.step += 1
        o = self.config.optim
        decay = ema_decay(self.step, self.plan.global_batch, o.ema_decay, o.ema_kimg, o.ema_rampup)
        self.ema.update(ema_source(self.G), decay)
        return stats

    # ---------------------------------------------------------------- outputs
    @property
    def stats_file(self) -> Path:
        return self.run_dir / "stats.jsonl"

    def alignment(self) -> dict[str, float]:
        """CKNNA/CKA of D's and the teacher's features (see `AlignmentMonitor`), on the main process."""
        if self._monitor is None:
            self._monitor = AlignmentMonitor(self.teacher, self.sampler.tokenizer, self.data, self.config.loss.mng,
                                             self.G.z_dim, self.device)
        return self._monitor(self.ema.model, self.D)

    def diagnose(self) -> dict[str, float]:
        """z-sensitivity of the EMA generator and D's overfitting (see `gatgan.train.diagnostics`)."""
        if self._diagnostics is None:
            tokenizer, held_out = self.sampler.tokenizer, separate_test_split(self.data)
            self._diagnostics = (
                DiversityMonitor(tokenizer, self.data, self.G.z_dim, self.device),
                None if held_out is None else OverfitMonitor(tokenizer, self.data, held_out, self.config.loss.mng,
                                                             self.G.z_dim, self.device))
        diversity, overfit = self._diagnostics
        return diversity(self.ema.model) | ({} if overfit is None else overfit(self.G, self.D))

    @property
    def sampler(self) -> Sampler:
        """Samples the EMA generator; the network is shared, so the sampler follows training."""
        if not hasattr(self, "_sampler"):
            tokenizer = load_tokenizer(self.run_dir / RUN_TOKENIZER).to(self.device).eval()
            self._sampler = Sampler(self.ema.model, tokenizer, self.data.scaling, self.data.class_names, self.device)
        return self._sampler

    def evaluate(self) -> dict[str, float]:
        """The in-training metric (see `InTrainingEvaluation`), on the main process."""
        if self._evaluation is None:
            self._evaluation = InTrainingEvaluation(self.config.eval, self.sampler, self.data.path, self.run_dir,
                                                    self.start_step)
        return self._evaluation(self.step)

    def save_samples(self) -> Path:
        rows = list(range(0, self.data.num_classes, max(1, self.data.num_classes // GRID_MAX_ROWS)))[:GRID_MAX_ROWS]
        images = self.sampler.images(seeds=[s for _ in rows for s in range(GRID_COLUMNS)],
                                      labels=[c for c in rows for _ in range(GRID_COLUMNS)])
        path = self.run_dir / "samples" / f"{self.step:08d}.png"
        save_grid(images, GRID_COLUMNS, path)
        return path

    def save(self) -> None:
        rng = {"noise": self.noise_rng.get_state()}
        gathered = [None] * self.env.world_size
        dist.all_gather_object(gathered, rng)
        # collectives under fsdp: every rank takes part, rank 0 receives the whole tensors
        networks = {"generator": full_weights(self.G), "discriminator": full_weights(self.D),
                    "generator_ema": self.ema.model.state_dict()}
        optimizers = {"opt_G": full_optimizer_state(self.G, self.opt_G),
                      "opt_D": full_optimizer_state(self.D, self.opt_D)}
        if self.env.is_main:
            state = {"step": self.step, **optimizers, "rng": gathered, "lr_scale": self._lr_scale}
            damaged = [name for name, tensors in networks.items()
                       if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())]
            if damaged:  # the step checks should make this impossible; a checkpoint is never worth the risk
                raise TrainingDiverged(f"step {self.step}: non-finite weights in {', '.join(damaged)}; "
                                       "not saving a checkpoint")
            extra = {CONFIG_FILE: (self.run_dir / CONFIG_FILE).read_text(),
                     DATA_CARD: (self.run_dir / DATA_CARD).read_text()}
            save_checkpoint(self.run_dir, self.step, networks, state, extra, keep=self.config.train.keep_checkpoints)
        dist.barrier()

    # ---------------------------------------------------------------- loop
    def train(self) -> None:
        cfg = self.config.train
        if self.env.is_main:
            print(f"G {self.config.model.generator}: {sum(p.numel() for p in self.G.parameters()) / 1e6:.2f}M params, "
                  f"lr {self.lr_G:.3g}; D {self.config.model.discriminator}: "
                  f"{sum(p.numel() for p in self.D.parameters()) / 1e6:.2f}M params, lr {self.lr_D:.3g}; "
                  f"batch {self.plan.global_batch} = {self.env.world_size} x {self.plan.per_device} x "
                  f"{self.plan.accumulation}; {self.total_steps} steps")
        bar = tqdm(total=self.total_steps, initial=self.step, unit="it", dynamic_ncols=True,
                   disable=not (self.progress and self.env.is_main))
        window: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)  # a lazy penalty's stats exist on its own steps only
        window_steps, window_start = 0, time.time()
        while self.step < self.total_steps:
            fault_point("train.step")
            try:
                stats = self.train_step()
            except NonFiniteStep as problem:
                self._roll_back(problem)
                window.clear()
                counts.clear()
                window_steps, window_start = 0, time.time()
                bar.n = self.step
                bar.refresh()
                continue
            for k, v in stats.items():
                window[k] += float(v)
                counts[k] += 1
            window_steps += 1
            bar.update(1)
            finished = self.step == self.total_steps
            if self.step % cfg.log_every == 0 or finished:
                averaged = mean_across_processes({k: v / counts[k] for k, v in window.items()}, self.device)
                elapsed = time.time() - window_start
                record = {"step": self.step, "kimg": round(self.step * self.plan.global_batch / 1000, 3),
                          "sec_per_step": round(elapsed / window_steps, 4), **averaged}
                if self.env.is_main and self.teacher is not None and cfg.align_every and (
                        self.step % cfg.align_every == 0 or finished):
                    record |= self.alignment()
                if self.env.is_main and cfg.diagnose_every and (self.step % cfg.diagnose_every == 0 or finished):
                    record |= self.diagnose()
                if self.env.is_main and self.config.eval.every and (self.step % self.config.eval.every == 0 or finished):
                    record |= self.evaluate()
                if self.env.is_main:
                    append_stats(self.stats_file, record)
                    self.logger.log(self.step, record)
                    bar.set_postfix({"D": f"{averaged['loss/D']:.3f}", "G": f"{averaged['loss/G']:.3f}"})
                window.clear()
                counts.clear()
                window_steps, window_start = 0, time.time()
            if self.env.is_main and (self.step % cfg.sample_every == 0 or finished):
                self.logger.image(self.step, "samples", self.save_samples())
            if self.step % cfg.checkpoint_every == 0 or finished:
                self.save()
        bar.close()

    def _roll_back(self, problem: NonFiniteStep) -> None:
        """Back to the last checkpoint (or the initial weights) with every learning rate multiplied by
        train.divergence_lr_backoff; after train.divergence_retries roll-backs, TrainingDiverged."""
        cfg = self.config.train
        self._rollbacks += 1
        if self._rollbacks > cfg.divergence_retries:
            raise TrainingDiverged(f"{problem}; gave up after {cfg.divergence_retries} roll-backs with lower "
                                   f"learning rates (train.divergence_retries). Check the data for non-finite "
                                   f"values, lower optim.base_lr, or start from an earlier checkpoint")
        failed_at = self.step + 1
        scale = self._lr_scale  # holds the back-offs since the checkpoint, which the checkpoint does not
        if not self._resume(latest_checkpoint(self.run_dir, quiet=not self.env.is_main)):
            self._reinitialise()
        self._lr_scale = scale * cfg.divergence_lr_backoff  # the next step's _schedule_learning_rates applies it
        self._batches_step = -1  # the data restarts at the restored step
        if self.env.is_main:
            truncate_stats(self.stats_file, self.step)
            print(f"{problem}: not applied. Rolled back from step {failed_at} to step {self.step} with the "
                  f"learning rates x{cfg.divergence_lr_backoff} (roll-back {self._rollbacks} of "
                  f"{cfg.divergence_retries})")

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        """Releases the DDP wrappers and the run directory. The wrappers' communication threads must be
        gone before the process group is destroyed, or the interpreter can abort at exit (seen with gloo)."""
        del self.G_ddp, self.D_ddp
        self._batches = None  # stops loader workers
        gc.collect()
        self.logger.close()
        self.release_lock()


def train(config: Config, progress: bool = True) -> Trainer:
    """Trains to the config's duration; the returned trainer no longer holds the run directory."""
    trainer = Trainer(config, progress=progress)
    try:
        trainer.train()
    finally:
        trainer.logger.close()
        trainer.release_lock()
    return trainer

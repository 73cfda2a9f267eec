"""`gatgan prepare`: labelled images -> a tokenizer's posterior moments in shards, on 1..N processes.

The source's fixed listing is cut into shards of `shard_size` consecutive examples; shard s belongs
to process s % world_size (under `torchrun`; on many nodes the output must be on a shared file
system). Everything is written into `<out>.partial/`, and each shard is complete once its record
exists, so re-running the same command after an interruption redoes only unfinished shards. When
all shards exist, rank 0 computes the latent statistics, writes `index.json` and renames the
directory to `<out>`: a directory without `.partial` is always complete, and is never overwritten.

The processes never talk to each other, they only look at files: no collective can time out while
one rank is still encoding, and a 2-process prepare writes exactly what a 1-process prepare writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..hardware import usable_cores
from ..encoders import Teacher, load_saved_teacher
from ..tokenizers import load_tokenizer
from ..tokenizers.base import LatentScaling, Tokenizer, to_signed_unit
from .imaging import BadImage, is_power_of_two
from .latents import FORMAT, INDEX_FILE, TEACHER_ARRAYS
from .shards import open_array, read_record, shard_name, write_shard
from .sources import ExampleSource, Problem

SETTINGS_FILE = "prepare.json"
TOKENIZER_DIR = "tokenizer"
TEACHER_DIR = "teacher"  # a REPA teacher trained on the data (the embedded stack's SSL encoder)
REPORT_FILE = "report.json"  # how a component stored with the data was made
LATENT_NORMS = ("auto", "fixed", "per-channel")
MOMENT_DTYPES = ("float32", "float16")
SHOWN_PER_REASON = 10  # problems printed per kind; all of them are in skipped.jsonl

# Builds the tokenizer (training it, for the embedded VAE) and returns it with a JSON report.
TokenizerProvider = Callable[[], tuple[Tokenizer, dict]]
# Trains a REPA teacher on the data (the embedded SSL encoder) and returns it with a JSON report.
TeacherProvider = Callable[[], tuple[Teacher, dict]]


@dataclass
class PrepareOptions:
    shard_size: int = 5000
    flip: bool = False  # also store the moments of the horizontally flipped image
    store_images: bool = True  # keep the cropped uint8 images (REPA targets, evaluation)
    teacher_features: bool = False  # also store the teacher's features of each image and its mirror image
    moments_dtype: str = "float32"
    latent_norm: str = "auto"  # auto: the tokenizer's published scaling if it has one, else per-channel
    seed: int = 0  # posterior samples for the latent statistics
    batch_size: int = 64  # images per tokenizer call
    workers: int = -1  # image-decoding processes per rank; -1: the cores divided among ranks
    device: str = "auto"
    progress: bool = True

    def output_settings(self) -> dict:
        """The options that change what is written: a resumed prepare must use the same ones."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "workers", "device", "progress")}

    def validate(self) -> None:
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError("shard size and batch size must be positive")
        if self.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent norm must be one of {LATENT_NORMS}, got {self.latent_norm!r}")
        if self.moments_dtype not in MOMENT_DTYPES:
            raise ValueError(f"moments dtype must be one of {MOMENT_DTYPES}, got {self.moments_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def check_resolution(resolution: int) -> None:
    if not (is_power_of_two(resolution) and resolution >= 8):
        raise ValueError(f"resolution must be a power of two >= 8 (e.g. 256 or 512), got {resolution}")


@dataclass
class _Ranks:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_environment(cls) -> "_Ranks":
        values = [int(os.environ.get(k, d)) for k, d in
                  (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))]
        return cls(*values)

    def device(self, preference: str) -> torch.device:
        if preference == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available")
        if preference != "cpu" and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _wait_until(done: Callable[[], bool], what: str, poll_seconds: float = 2.0) -> None:
    if done():
        return
    print(f"waiting for {what} ...", flush=True)
    while not done():
        time.sleep(poll_seconds)


# ------------------------------------------------------------------------------ encoding
class _Loading(Dataset):
    """Loads examples in worker processes; a bad one comes back as a Problem instead of an error."""

    def __init__(self, source: ExampleSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return index, self.source.load(index)
        except BadImage as error:
            return index, Problem(self.source.key(index), str(error))


def _identity_collate(batch: list) -> list:
    return batch


@torch.no_grad()
def encode_moments(tokenizer: Tokenizer, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 [B, C, H, W] -> float32 [B, 2c, h, w] posterior moments (mean ‖ std)."""
    mean, std = tokenizer.encode_moments(to_signed_unit(images).to(device))
    return torch.cat([mean, std], dim=1).float().cpu().numpy()


class _ShardBuilder:
    """Collects the loaded batches of one shard, then writes its arrays and record."""

    def __init__(self, shard: int, options: PrepareOptions):
        self.shard, self.options, self.started = shard, options, time.time()
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in (
            "moments", "labels", "images", "moments_flip", *TEACHER_ARRAYS)}
        self.problems: list[list[str]] = []
        self.notes: list[list[str]] = []

    def add(self, loaded: list, source: ExampleSource, tokenizer: Tokenizer, device: torch.device,
            teacher: Teacher | None = None) -> None:
        examples = []
        for index, item in loaded:
            if isinstance(item, Problem):
                self.problems.append([item.key, item.reason])
                continue
            examples.append(item)
            if item.note:
                self.notes.append([source.key(index), item.note])
        if not examples:
            return
        images = np.stack([e.image for e in examples])
        if examples[0].moments is not None:  # imported data: the moments were computed elsewhere
            moments = np.stack([e.moments for e in examples]).astype(np.float32)
        else:
            moments = encode_moments(tokenizer, images, device)
        dtype = self.options.moments_dtype
        self.parts["moments"].append(moments.astype(dtype))
        self.parts["labels"].append(np.array([e.label for e in examples], dtype=np.int64))
        if self.options.store_images:
            self.parts["images"].append(images)
        if self.options.flip:
            self.parts["moments_flip"].append(encode_moments(tokenizer, images[..., ::-1].copy(), device).astype(dtype))
        if teacher is not None:  # float16: features are compared by cosine, and they are large
            for suffix, pixels in (("", images), ("_flip", images[..., ::-1].copy())):
                features = teacher(torch.from_numpy(pixels).to(device))
                self.parts[f"teacher_cls{suffix}"].append(features.cls.half().cpu().numpy())
                self.parts[f"teacher_patches{suffix}"].append(features.patches.half().cpu().numpy())

    def write(self, root: Path) -> None:
        arrays = {name: np.concatenate(parts) for name, parts in self.parts.items() if parts}
        count = len(arrays["labels"]) if arrays else 0
        record = {"count": count, "problems": self.problems, "notes": self.notes, "started": self.started}
        if count:
            record.update(self._latent_sums(arrays["moments"]))
        record["finished"] = time.time()
        write_shard(root, self.shard, arrays, record)

    def _latent_sums(self, moments: np.ndarray) -> dict:
        """Per-channel sums of one posterior sample of every latent (float64), combined across
        shards into the data set's latent mean and std."""
        generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + self.shard)
        mean, std = torch.from_numpy(moments.astype(np.float64)).chunk(2, dim=1)
        sample = mean + std * torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        return {"latent_sum": sample.sum(dim=(0, 2, 3)).tolist(),
                "latent_sum_sq": sample.square().sum(dim=(0, 2, 3)).tolist(),
                "latent_values": int(sample[:, 0].numel())}


def _encode_shards(source: ExampleSource, tokenizer: Tokenizer, staging: Path, shards: list[int],
                   options: PrepareOptions, ranks: _Ranks, device: torch.device, teacher: Teacher | None) -> int:
    batches = []
    for shard in shards:
        rows = range(shard * options.shard_size, min((shard + 1) * options.shard_size, len(source)))
        batches += [(shard, list(rows[i:i + options.batch_size])) for i in range(0, len(rows), options.batch_size)]
    if not batches:
        return 0
    workers = options.workers if source.decodes else 0
    if workers < 0:
        workers = min(16, max(0, usable_cores() // ranks.local_world_size - 1))
    loader = DataLoader(_Loading(source), batch_sampler=[rows for _, rows in batches], num_workers=workers,
                        collate_fn=_identity_collate, prefetch_factor=4 if workers else None)
    bar = tqdm(total=sum(len(rows) for _, rows in batches), unit="img", dynamic_ncols=True,
               desc=f"rank {ranks.rank}/{ranks.world_size}: {len(shards)} shards",
               disable=not (options.progress and ranks.rank == 0))
    remaining = Counter(shard for shard, _ in batches)
    builder: _ShardBuilder | None = None
    written = 0
    for (shard, rows), loaded in zip(batches, loader):
        if builder is None:
            builder = _ShardBuilder(shard, options)
        builder.add(loaded, source, tokenizer, device, teacher)
        bar.update(len(rows))
        remaining[shard] -= 1
        if remaining[shard] == 0:
            builder.write(staging)
            written += 1
            builder = None
    bar.close()
    return written


# ------------------------------------------------------------------------------ the whole run
def prepare(source: ExampleSource, out: str | Path, provide_tokenizer: TokenizerProvider, tokenizer_request: str,
            options: PrepareOptions | None = None, provide_teacher: TeacherProvider | None = None,
            teacher_request: str = "") -> Path:
    """Writes the prepared directory `out` (layout in `gatgan.data.latents`) from `source`, or
    finishes an interrupted run of the same command. Returns `out`. With `provide_teacher`, a
    REPA teacher made from the data is stored beside it (`loss.repa.teacher=data`)."""
    options = options or PrepareOptions()
    options.validate()
    out = Path(out)
    if already_prepared(out):
        return out
    if options.flip and source.provides_moments:
        raise ValueError("imported moments have no flipped copy; drop --flip")
    if options.teacher_features and provide_teacher is None:
        raise ValueError("teacher features need a teacher (--teacher)")
    ranks = _Ranks.from_environment()
    staging = out.with_name(out.name + ".partial")
    settings = {"source": source.description, "examples": len(source), "class_names": source.class_names,
                "tokenizer": tokenizer_request, "teacher": teacher_request, **source.output_settings(),
                **options.output_settings()}
    if ranks.rank == 0:
        _start_or_resume(staging, settings)
        _report_listing(source)
    else:
        _wait_until(lambda: (staging / SETTINGS_FILE).is_file(), f"rank 0 to create {staging}")
        _check_settings(staging, settings)

    tokenizer_dir = staging / TOKENIZER_DIR
    if ranks.rank == 0:
        _store_component(provide_tokenizer, tokenizer_dir, "tokenizer.json", load_tokenizer)
        if provide_teacher is not None:
            _store_component(provide_teacher, staging / TEACHER_DIR, "teacher.json", load_saved_teacher)
    _wait_until(lambda: (tokenizer_dir / "tokenizer.json").is_file(), "rank 0 to provide the tokenizer")
    device = ranks.device(options.device)
    if device.type == "cpu" and ranks.local_world_size > 1:  # ranks on one machine share its cores
        torch.set_num_threads(max(1, usable_cores() // ranks.local_world_size))
    tokenizer = load_tokenizer(tokenizer_dir).to(device).eval()
    teacher = None
    if options.teacher_features:
        _wait_until(lambda: (staging / TEACHER_DIR / "teacher.json").is_file(), "rank 0 to provide the teacher")
        teacher = load_saved_teacher(staging / TEACHER_DIR).to(device).eval()

    started = time.time()
    num_shards = math.ceil(len(source) / options.shard_size)
    mine = [s for s in range(ranks.rank, num_shards, ranks.world_size) if read_record(staging, s) is None]
    if len(mine) < len(range(ranks.rank, num_shards, ranks.world_size)):
        print(f"rank {ranks.rank}: resuming, {len(mine)} of its shards left to do")
    _encode_shards(source, tokenizer, staging, mine, options, ranks, device, teacher)
    if ranks.rank != 0:
        print(f"rank {ranks.rank}: finished its shards; rank 0 writes the index")
        return out
    _wait_until(lambda: all(read_record(staging, s) is not None for s in range(num_shards)),
                "the other ranks' shards")
    return _finalize(source, tokenizer, staging, out, settings, options, num_shards, started)


def already_prepared(out: str | Path) -> bool:
    """A finished output is never redone or overwritten."""
    if (Path(out) / INDEX_FILE).is_file():
        print(f"{out} is already prepared; delete it to prepare again")
        return True
    return False


def _start_or_resume(staging: Path, settings: dict) -> None:
    if (staging / SETTINGS_FILE).is_file():
        _check_settings(staging, settings)
        print(f"resuming the interrupted prepare in {staging}")
        return
    staging.mkdir(parents=True, exist_ok=True)
    (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))


def _check_settings(staging: Path, settings: dict) -> None:
    saved = json.loads((staging / SETTINGS_FILE).read_text())
    changed = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
    if changed:
        details = "; ".join(f"{k}: {str(saved.get(k))[:60]} -> {str(settings.get(k))[:60]}" for k in changed)
        raise ValueError(f"{staging} holds an interrupted prepare with other settings ({details}). Re-run it with "
                         f"the same settings to finish it, or delete {staging} to start over")


def _store_component(provide: Callable[[], tuple], directory: Path, marker: str, load: Callable) -> None:
    """Builds (or trains) a network stored with the data, once: a resumed prepare reuses it."""
    if (directory / marker).is_file():
        return
    component, report = provide()
    temporary = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    component.save(temporary)
    (temporary / REPORT_FILE).write_text(json.dumps(report, indent=2))
    load(temporary)  # fail now, not in training, if what was saved cannot be read back
    temporary.rename(directory)


def _report_listing(source: ExampleSource) -> None:
    for warning in source.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _print_problems(source.problems, "left out while listing")


def _print_problems(problems: list[Problem], what: str) -> None:
    if not problems:
        return
    by_reason: dict[str, list[Problem]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason.split(" (")[0], []).append(problem)
    print(f"warning: {len(problems)} files {what}:", file=sys.stderr)
    for reason, group in by_reason.items():
        for problem in group[:SHOWN_PER_REASON]:
            print(f"  {problem}", file=sys.stderr)
        if len(group) > SHOWN_PER_REASON:
            print(f"  ... and {len(group) - SHOWN_PER_REASON} more: {reason}", file=sys.stderr)


def _component_index(directory: Path, marker: str) -> dict | None:
    if not (directory / marker).is_file():
        return None
    return {"path": directory.name, **json.loads((directory / marker).read_text()),
            "report": json.loads((directory / REPORT_FILE).read_text())}


def _latent_statistics(records: list[dict]) -> tuple[list[float], list[float]]:
    filled = [r for r in records if r["count"]]
    values = sum(r["latent_values"] for r in filled)
    total = np.sum([r["latent_sum"] for r in filled], axis=0)
    total_sq = np.sum([r["latent_sum_sq"] for r in filled], axis=0)
    mean = total / values
    std = np.sqrt(np.maximum(total_sq / values - mean ** 2, 0.0))
    return mean.tolist(), std.tolist()


def choose_scaling(tokenizer: Tokenizer, norm: str, mean: list[float], std: list[float]) -> LatentScaling:
    fixed = tokenizer.fixed_scaling()
    if norm == "fixed" and fixed is None:
        raise ValueError(f"the {tokenizer.kind} tokenizer has no published scaling; use --latent-norm per-channel")
    if fixed is not None and norm != "per-channel":
        return fixed
    return LatentScaling(shift=list(mean), scale=[1.0 / max(s, 1e-6) for s in std])


def _finalize(source: ExampleSource, tokenizer: Tokenizer, staging: Path, out: Path, settings: dict,
              options: PrepareOptions, num_shards: int, started: float) -> Path:
    records = [read_record(staging, s) for s in range(num_shards)]
    count = sum(r["count"] for r in records)
    skipped = source.problems + [Problem(*p) for r in records for p in r["problems"]]
    if count == 0:
        _print_problems(skipped, "could not be used")
        raise ValueError(f"no example of {source.description} could be prepared (see the messages above)")
    first = next(s for s, r in enumerate(records) if r["count"])
    latent_shape = list(open_array(staging, first, "moments").shape[1:])
    latent_shape[0] //= 2
    mean, std = _latent_statistics(records)
    scaling = choose_scaling(tokenizer, options.latent_norm, mean, std)
    tokenizer_json = json.loads((staging / TOKENIZER_DIR / "tokenizer.json").read_text())
    this_session = [r for r in records if r["finished"] >= started]
    seconds = time.time() - started
    summary = {
        "listed": len(source) + len(source.problems), "prepared": count, "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(p.reason.split(" (")[0] for p in skipped)),
        "converted_by_kind": dict(Counter(n[1] for r in records for n in r["notes"])),
        "seconds_this_session": round(seconds, 1),
        "images_per_second_this_session": round(sum(r["count"] for r in this_session) / max(seconds, 1e-9), 1),
    }
    index = {
        "format": FORMAT, "source": source.description, "count": count,
        "shards": [{"name": shard_name(s), "count": r["count"]} for s, r in enumerate(records)],
        "arrays": {"moments": options.moments_dtype, "labels": "int64", "images": options.store_images,
                   "moments_flip": options.flip, "teacher_features": options.teacher_features},
        "image_shape": list(open_array(staging, first, "images").shape[1:]) if options.store_images else None,
        "latent_shape": latent_shape, "class_names": source.class_names,
        "tokenizer": {"path": TOKENIZER_DIR, **tokenizer_json},
        "tokenizer_report": json.loads((staging / TOKENIZER_DIR / REPORT_FILE).read_text()),
        "teacher": _component_index(staging / TEACHER_DIR, "teacher.json"),
        "scaling": scaling.to_dict(), "latent_norm": options.latent_norm,
        "latent_stats": {"mean": mean, "std": std}, "settings": settings, "summary": summary,
    }
    with open(staging / "skipped.jsonl", "w") as f:
        f.writelines(json.dumps({"file": p.key, "reason": p.reason}) + "\n" for p in skipped)
    with open(staging / "converted.jsonl", "w") as f:
        f.writelines(json.dumps({"file": n[0], "note": n[1]}) + "\n" for r in records for n in r["notes"])
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
    staging.rename(out)
    _print_problems([Problem(*p) for r in records for p in r["problems"]], "could not be read")
    print(f"prepared {count} of {summary['listed']} examples into {out}: {len(skipped)} skipped "
          f"({', '.join(f'{n} {k}' for k, n in summary['skipped_by_reason'].items()) or 'none'}), "
          f"{sum(summary['converted_by_kind'].values())} converted; {seconds:.0f} s this session "
          f"({summary['images_per_second_this_session']} images/s)"
          + (f"; the skipped files are listed in {out / 'skipped.jsonl'}" if skipped else ""))
    return out

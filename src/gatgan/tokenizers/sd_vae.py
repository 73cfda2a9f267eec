"""The Stable Diffusion VAE (a diffusers `AutoencoderKL`) as a gatgan tokenizer.

Weights are never downloaded implicitly: `from_source` takes a local diffusers directory, a single
weights file (original LDM/CompVis keys or diffusers keys), or, only when asked for by name, a
Hugging Face Hub id. `save` writes a complete copy of the weights beside tokenizer.json, so prepared
data and training runs never depend on where the VAE originally came from.

diffusers is imported inside functions, so `import gatgan` works without the `vae` extra.

Loading is strict on purpose: diffusers' own `from_single_file` and `from_pretrained` only warn (or,
for single files, say nothing) when weights are missing and leave those layers randomly
initialised, which would silently produce a latent space no published model uses.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..weights import read_state_dict
from .base import LatentScaling, Tokenizer

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

# The published stabilityai/sd-vae-ft-mse architecture (also that of the original SD 1.x VAE), used
# for single weight files when no `config` is given, so they load without the network.
DEFAULT_CONFIG = Path(__file__).with_name("sd_vae_ft_mse.json")
WEIGHTS_DIR = "vae"  # the self-contained copy inside a saved tokenizer directory
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
LDM_PREFIXES = ("first_stage_model.", "vae.")  # the VAE inside a full SD checkpoint
HOW_TO_GET = ("To get the SD VAE, run e.g. `hf download stabilityai/sd-vae-ft-mse --local-dir "
              "/path/to/sd-vae-ft-mse` and pass that directory, or pass a single weights file such as "
              "vae-ft-mse-840000-ema-pruned.safetensors (from stabilityai/sd-vae-ft-mse-original).")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hugging Face hub id, owner/name


def _autoencoder_kl() -> type[AutoencoderKL]:
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("the sd_vae tokenizer needs diffusers: pip install 'gatgan[vae]'") from error
    return AutoencoderKL


def _offline() -> bool:
    """HF_HUB_OFFLINE read now: huggingface_hub reads it once at import, so setting it later has no effect there."""
    from huggingface_hub import constants

    def truthy(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return truthy("HF_HUB_OFFLINE") or truthy("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub(offline: bool) -> Iterator[None]:
    """Around calls that may reach the Hub. Offline, huggingface_hub's own flag is raised too: with only
    local_files_only it still fetches an "agent harnesses" registry from huggingface.co to build a
    User-Agent header. Also hides diffusers' harmless `local_dir_use_symlinks` deprecation warning."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
            yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _strict_pretrained(source: str, subfolder: str | None, local_files_only: bool) -> AutoencoderKL:
    """`from_pretrained`, but missing or mis-shaped weights are an error rather than a warning."""
    with _hub(offline=local_files_only):
        vae, info = _autoencoder_kl().from_pretrained(source, subfolder=subfolder, local_files_only=local_files_only,
                                                       low_cpu_mem_usage=False, output_loading_info=True)
    problems = {name: info.get(name) for name in ("missing_keys", "mismatched_keys") if info.get(name)}
    if problems:
        raise ValueError(f"{source} does not hold a complete AutoencoderKL: {_summarise(problems)}")
    return vae


def _summarise(problems: dict[str, Any]) -> str:
    return "; ".join(f"{len(keys)} {name.replace('_', ' ')} (e.g. {list(keys)[:3]})" for name, keys in problems.items())


def _to_diffusers_keys(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Keeps only the VAE of a full SD checkpoint and renames LDM keys (encoder.down.0.block.0...) to
    diffusers ones (encoder.down_blocks.0.resnets.0...) with diffusers' own converter."""
    for prefix in LDM_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            break
    if any(key.startswith(("encoder.down.", "decoder.up.")) for key in state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        state = convert_ldm_vae_checkpoint(state, config)
    return state


def _load_single_file(path: Path, config: str | None, subfolder: str | None) -> AutoencoderKL:
    AutoencoderKL = _autoencoder_kl()
    architecture = config or str(DEFAULT_CONFIG)
    local = _offline() or Path(architecture).exists()
    try:
        with _hub(offline=local):
            model_config = AutoencoderKL.load_config(architecture, subfolder=subfolder if config else None,
                                                     local_files_only=local)
    except Exception as error:
        raise FileNotFoundError(f"could not read the AutoencoderKL config {architecture!r} for {path}: {error}. "
                                "Pass config= a local diffusers directory (or config.json) describing the "
                                "architecture.") from error
    vae = AutoencoderKL.from_config(model_config)
    state = _to_diffusers_keys(read_state_dict(path, HOW_TO_GET), dict(vae.config))
    missing, unexpected = (sorted(set(a) - set(b)) for a, b in ((vae.state_dict(), state), (state, vae.state_dict())))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the AutoencoderKL architecture {architecture}: "
                         f"{_summarise({'missing_keys': missing, 'unexpected_keys': unexpected})}. "
                         "If it is a different VAE, pass config= its diffusers config. " + HOW_TO_GET)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shapes differ: the config describes another architecture
        raise ValueError(f"{path} does not match the AutoencoderKL architecture {architecture}: {error}") from error
    return vae.eval()


def _load_directory(path: Path, subfolder: str | None) -> AutoencoderKL:
    target = path / subfolder if subfolder else path
    config_file = target / "config.json"
    if not config_file.is_file():
        hint = " (it looks like a full pipeline: pass subfolder='vae')" if (path / "vae" / "config.json").is_file() else ""
        raise FileNotFoundError(f"{target} is not a diffusers AutoencoderKL directory: it has no config.json{hint}. "
                                + HOW_TO_GET)
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in (None, "AutoencoderKL"):
        raise ValueError(f"{config_file} describes a {class_name}, not an AutoencoderKL")
    if not any(target.glob("diffusion_pytorch_model*")):
        raise FileNotFoundError(f"{target} has a config.json but no diffusion_pytorch_model.safetensors/.bin. "
                                + HOW_TO_GET)
    return _strict_pretrained(str(path), subfolder, local_files_only=True)


def _load_hub(repo_id: str, subfolder: str | None) -> AutoencoderKL:
    offline = _offline()
    try:
        return _strict_pretrained(repo_id, subfolder, local_files_only=offline)
    except Exception as error:
        where = "only the local Hugging Face cache was searched (HF_HUB_OFFLINE is set)" if offline \
            else "downloading it from the Hugging Face Hub failed"
        name = repo_id.split("/")[-1]
        raise FileNotFoundError(
            f"SD VAE {repo_id!r} is not a local file or directory, and {where}: {error}\n"
            f"Download it where the Hub is reachable with `hf download {repo_id} "
            f"{f'--include {subfolder}/* ' if subfolder else ''}--local-dir /path/to/{name}`, copy it here, and "
            f"pass /path/to/{name}{f' with subfolder={subfolder!r}' if subfolder else ''} instead.") from error


class SDVAETokenizer(Tokenizer):
    """Wraps a frozen `AutoencoderKL`; encode/decode run in the module's device and dtype (so it may be
    cast to bf16/fp16 on a GPU) and always return float32."""

    kind = "sd_vae"

    def __init__(self, vae: AutoencoderKL, *, source: str | None = None, subfolder: str | None = None,
                 config: str | None = None) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)  # a published latent space: never trained here
        self.source, self.subfolder, self.config_source = source, subfolder, config
        self.image_channels = int(vae.config.in_channels)
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_source(cls, source: str | Path, *, subfolder: str | None = None,
                    config: str | None = None) -> SDVAETokenizer:
        """source: a diffusers directory (with `subfolder`, e.g. "vae" of a full SD pipeline), a single
        .safetensors/.ckpt/.pt/.pth/.bin file in LDM or diffusers key layout (architecture from `config`,
        a diffusers directory/config.json/Hub id, by default the bundled sd-vae-ft-mse config), or a Hub
        id such as "stabilityai/sd-vae-ft-mse" (the only case that may use the network)."""
        _autoencoder_kl()
        path = Path(source).expanduser()
        if path.is_dir():
            vae = _load_directory(path, subfolder)
        elif path.is_file():
            vae = _load_single_file(path, config, subfolder)
        elif HUB_ID.match(str(source)) and path.suffix not in SINGLE_FILE_SUFFIXES:
            vae = _load_hub(str(source), subfolder)
        else:
            raise FileNotFoundError(f"SD VAE source {str(source)!r} does not exist: it is not a local file or "
                                    f"directory, nor a Hugging Face Hub id (owner/name). {HOW_TO_GET}")
        return cls(vae, source=str(source), subfolder=subfolder, config=config)

    def _like_vae(self, x: torch.Tensor) -> torch.Tensor:
        parameter = next(self.vae.parameters())
        return x.to(device=parameter.device, dtype=parameter.dtype)

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(self._like_vae(images)).latent_dist
        # std from the float32 log-variance: exp() in bf16 would add ~0.4% error on top of the VAE's own
        return posterior.mean.float(), torch.exp(0.5 * posterior.logvar.float())

    def decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self._like_vae(raw_latents)).sample.float()

    def fixed_scaling(self) -> LatentScaling:
        """diffusers' convention, latent = (raw - shift_factor) * scaling_factor; VAEs published with
        per-channel latents_mean/latents_std (SDXL-style pipelines) use those as well."""
        config = self.vae.config
        scaling = float(config.scaling_factor)
        means, stds = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if means is not None and stds is not None:
            return LatentScaling(shift=[float(m) for m in means], scale=[scaling / float(s) for s in stds])
        return LatentScaling(shift=[float(getattr(config, "shift_factor", None) or 0.0)], scale=[scaling])

    def config(self) -> dict:
        return {"source": self.source, "subfolder": self.subfolder, "config": self.config_source,
                "weights": WEIGHTS_DIR}

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        self.vae.save_pretrained(Path(directory) / WEIGHTS_DIR, safe_serialization=True)

    @classmethod
    def from_directory(cls, directory: str | Path, config: dict) -> SDVAETokenizer:
        """Rebuilds a saved tokenizer from its own weight copy, never from the original source."""
        weights = Path(directory) / config.get("weights", WEIGHTS_DIR)
        if not (weights / "config.json").is_file() or not any(weights.glob("diffusion_pytorch_model*")):
            raise FileNotFoundError(f"tokenizer in {directory} is an sd_vae but its weight copy {weights} is missing "
                                    f"or incomplete (written by SDVAETokenizer.save; originally from "
                                    f"{config.get('source')!r})")
        vae = _strict_pretrained(str(weights), None, local_files_only=True)
        return cls(vae, source=config.get("source"), subfolder=config.get("subfolder"),
                   config=config.get("config")).eval()

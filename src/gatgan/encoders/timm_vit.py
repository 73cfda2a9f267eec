"""A timm VisionTransformer (by default DINOv2, the REPA teacher) as a frozen gatgan teacher.

Weights are never downloaded implicitly: `from_spec` takes a local file (the original
facebookresearch DINOv2 `dinov2_vit*14*_pretrain.pth`, or a timm-format state dict as
.safetensors/.pth/.bin, or a directory holding timm's `model.safetensors`/`pytorch_model.bin`), and
only `weights="hub"` lets timm fetch its published weights from the Hugging Face Hub. `save` writes
the weights (timm layout, already at the teacher's input size) beside teacher.json, so a saved teacher
reloads offline and never depends on where the weights originally came from.

Matching REPA (sihyun-yu/REPA `load_encoders`/`preprocess_raw_image`): images are scaled to [0, 1],
normalised with the ImageNet mean/std and resized to 224x224 (bicubic, no antialiasing); the
checkpoint's 37x37 position embedding is resampled once to 16x16 with timm's `resample_abs_pos_embed`
(bicubic, antialiased), exactly what REPA does to the torch.hub DINOv2 model; the features are the
final-norm [cls] token and patch tokens (DINOv2's x_norm_clstoken / x_norm_patchtokens).

timm is imported inside functions, so `import gatgan.encoders.timm_vit` works without the `repa` extra.
Loading is strict: every weight of the network must come from the file, and nothing in the file may
be left over (timm's own `pretrained=True` path silently drops a mismatched classifier and loads
non-strictly; its checkpoint filter would also silently resample a patch embedding of another size).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..weights import read_state_dict as read_weights_file
from .base import Teacher, TeacherFeatures

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

KIND = "timm_vit"
WEIGHTS_FILE = "teacher.safetensors"  # the self-contained copy inside a saved teacher directory
HUB = "hub"  # weights="hub": the only request that may use the network
DINOV2_RESOLUTION = 224  # 16x16 tokens of 14 px, as REPA and GAT use for 256 px images
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_DIRECTORY_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's layout on the Hugging Face Hub

_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
# facebookresearch/dinov2 hub names -> timm names, e.g. dinov2_vitb14 -> vit_base_patch14_dinov2
ALIASES = {f"dinov2_vit{letter}14{'_reg' if reg else ''}": f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2"
           for letter, size in _SIZES.items() for reg in (False, True)}
_TIMM_DINOV2 = re.compile(r"^vit_(small|base|large|giant)_patch14_(reg4_)?dinov2$")


def _timm():
    try:
        import timm
    except ImportError as error:
        raise ImportError("the timm_vit teacher needs timm: pip install 'gatgan[repa]'") from error
    return timm


def _arch(name: str) -> str:
    """The timm architecture name without a pretrained tag (vit_base_patch14_dinov2.lvd142m -> ...dinov2)."""
    return name.split(".", 1)[0]


def is_dinov2(name: str) -> bool:
    return "dinov2" in _arch(name)


def how_to_get(name: str, hub_id: str | None = None, *, offer_hub: bool = True) -> str:
    """Where the weights of timm model `name` can be downloaded (printed on every weights error)."""
    steps = []
    match = _TIMM_DINOV2.match(_arch(name))
    if match:
        base = f"dinov2_vit{match[1][0]}14"
        full = base + ("_reg4" if match[2] else "")
        steps.append(f"download the original DINOv2 weights https://dl.fbaipublicfiles.com/dinov2/{base}/"
                     f"{full}_pretrain.pth and pass weights='/path/to/{full}_pretrain.pth'")
    if hub_id is None and match:
        hub_id = f"timm/{_arch(name)}.lvd142m"
    if hub_id:
        local = hub_id.split("/")[-1]
        steps.append(f"run `hf download {hub_id} --local-dir /path/to/{local}` where the Hub is "
                     f"reachable and pass weights='/path/to/{local}'")
    steps.append("pass weights= any local timm-format state dict (.safetensors/.pth/.bin) of this architecture")
    if hub_id and offer_hub:
        steps.append(f"pass weights={HUB!r} to let timm download {hub_id} now")
    return "To get the weights: " + "; or ".join(steps) + "."


def _offline() -> bool:
    """HF_HUB_OFFLINE read now: huggingface_hub reads it once at import, so setting it later has no effect there."""
    from huggingface_hub import constants

    def truthy(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return truthy("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub(offline: bool) -> Iterator[None]:
    """Around the download: offline, huggingface_hub's own (import-time) flag is raised too."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def create_model(name: str, resolution: int | None = None, *, device: str | torch.device = "meta") -> VisionTransformer:
    """An uninitialised (meta-device by default: no time spent on random init) timm VisionTransformer with
    no classifier, at input size `resolution` (None: the model's default), checked to be usable here."""
    timm = _timm()
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(name):
        close = difflib.get_close_matches(_arch(name), timm.list_models() + sorted(ALIASES), n=5, cutoff=0.75)
        raise ValueError(f"unknown timm model {name!r}; use a timm VisionTransformer name such as "
                         f"vit_base_patch14_dinov2 or vit_small_patch16_224, or one of {sorted(ALIASES)}"
                         + (f" (similar timm names: {close})" if close else ""))
    kwargs = {"pretrained": False, "num_classes": 0}
    if resolution is not None:
        kwargs["img_size"] = int(resolution)
    try:
        with torch.device(device):
            model = timm.create_model(name, **kwargs)
    except (RuntimeError, TypeError, AssertionError) as error:
        raise ValueError(f"could not create timm model {name!r} at resolution {resolution}: {error}") from error
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    if model.cls_token is None:
        raise ValueError(f"timm model {name!r} has no [cls] token (it pools with {model.global_pool!r})")
    if isinstance(model.norm, torch.nn.Identity) or not isinstance(model.fc_norm, torch.nn.Identity):
        raise ValueError(f"timm model {name!r} normalises only its pooled output (fc_norm), so its tokens carry "
                         "no final norm; use a model with a [cls] token and a final norm")
    size, patch = tuple(model.patch_embed.img_size), tuple(model.patch_embed.patch_size)
    if size[0] != size[1] or size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"resolution {size} of {name!r} must be square and a multiple of its patch size {patch}")
    return model


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle (weights_only: no code from the file runs), or from
    a directory in timm's Hub layout (model.safetensors or pytorch_model.bin)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in HUB_DIRECTORY_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither of {HUB_DIRECTORY_FILES}: pass the weights file itself")
        path = found[0]
    return read_weights_file(path)


def convert_state_dict(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Original DINOv2 (or any timm-known) layout -> `model`'s timm layout, with timm's own
    `checkpoint_filter_fn` (drops mask_token, w12/w3 -> fc1/fc2, register_tokens -> reg_token, resamples
    pos_embed to the model's grid); classifier weights (head.*) are dropped since the model has none.
    Raises ValueError, naming the keys, unless the result matches the model's keys and shapes exactly."""
    _timm()
    from timm.models.vision_transformer import checkpoint_filter_fn

    kernel = state.get("patch_embed.proj.weight")
    expected_kernel = tuple(model.patch_embed.proj.weight.shape[-2:])
    if isinstance(kernel, torch.Tensor) and kernel.ndim == 4 and tuple(kernel.shape[-2:]) != expected_kernel:
        raise ValueError(f"the weights have {tuple(kernel.shape[-2:])} patches, the model {expected_kernel}: "
                         "they are for another architecture")
    try:
        converted = checkpoint_filter_fn(dict(state), model)  # (the filter pops keys from its argument)
    except Exception as error:
        raise ValueError(f"timm could not convert the weights for {type(model).__name__}: {error}") from error
    if isinstance(model.head, torch.nn.Identity):
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    target = model.state_dict()
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mismatched = sorted(f"{k} {tuple(converted[k].shape)} (model: {tuple(target[k].shape)})"
                        for k in set(target) & set(converted) if converted[k].shape != target[k].shape)
    problems = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched shapes", mismatched)) if keys]
    if problems:
        raise ValueError("; ".join(problems))
    return converted


def load_weights(model: VisionTransformer, state: dict[str, torch.Tensor]) -> VisionTransformer:
    """`convert_state_dict`, then a strict load (assigning the tensors, as float32, if the model is on
    the meta device). Returns the model."""
    converted = convert_state_dict(state, model)
    converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(converted, strict=True, assign=meta)
    leftover = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors not in the model's state dict were left uninitialised: {leftover[:5]}")
    return model


def _hub_state(name: str, model: VisionTransformer) -> dict[str, torch.Tensor]:
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id or hub_id.endswith("/"):
        raise FileNotFoundError(f"timm knows no Hugging Face Hub weights for {name!r}. " + how_to_get(name))
    from timm.models import load_state_dict_from_hf

    offline = _offline()
    try:
        with _hub(offline):
            filename = model.pretrained_cfg.get("hf_hub_filename")
            return load_state_dict_from_hf(hub_id, filename) if filename else load_state_dict_from_hf(hub_id)
    except Exception as error:
        where = ("only the local Hugging Face cache was searched (HF_HUB_OFFLINE is set)" if offline
                 else "downloading them from the Hugging Face Hub failed")
        raise FileNotFoundError(f"weights {hub_id!r} for {name!r} are not in the local cache and {where}: "
                                f"{error}\n" + how_to_get(name, hub_id, offer_hub=False)) from error


class TimmViTTeacher(Teacher):
    """A frozen timm VisionTransformer in eval mode. `preprocess` and `features` run in the network's
    device (preprocessing in float32, the network in its dtype, so it may be cast to bf16 on a GPU);
    features are returned as float32."""

    kind = KIND

    def __init__(self, model: VisionTransformer, *, name: str, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, source: str | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name, self.source = name, source
        self.resolution = int(model.patch_embed.img_size[0])
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.grid = (self.resolution // self.patch_size,) * 2
        self.dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        if mean is None or std is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if is_dinov2(name) else (cfg.get("mean"), cfg.get("std"))
        if mean is None or std is None:
            raise ValueError(f"timm does not say which mean/std {name!r} expects; pass them")
        self.mean_values, self.std_values = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.register_buffer("mean", torch.tensor(self.mean_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.std_values).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_spec(cls, model: str, weights: str | Path | None = None, resolution: int | None = None) -> TimmViTTeacher:
        """model: a timm VisionTransformer name (with a [cls] token), e.g. vit_base_patch14_dinov2 or
        vit_small_patch16_224, or an alias dinov2_vit{s,b,l,g}14[_reg]. weights: a local file (original
        DINOv2 checkpoint or timm state dict), a directory in timm's Hub layout, or "hub" (timm downloads
        its published weights; the only case that may use the network). resolution: the input size
        (default 224 for DINOv2, else the model's default)."""
        name = ALIASES.get(model, model)
        if resolution is None and is_dinov2(name):
            resolution = DINOV2_RESOLUTION
        architecture = create_model(name, resolution)
        if weights is None:
            raise FileNotFoundError(f"no weights given for {name!r}: pass weights= a local file (weights are "
                                    f"never downloaded unless weights={HUB!r}). " + how_to_get(name))
        if str(weights) == HUB:
            state, source = _hub_state(name, architecture), f"hub:{architecture.pretrained_cfg.get('hf_hub_id')}"
        else:
            path = Path(weights).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"weights {str(weights)!r} for {name!r} do not exist. " + how_to_get(name))
            state, source = read_weights(path), str(weights)
        try:
            load_weights(architecture, state)
        except ValueError as error:
            raise ValueError(f"{source} does not hold the weights of timm {name!r}: {error}. "
                             + how_to_get(name)) from error
        return cls(architecture, name=name, source=source)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-valued images [B, 1 or 3, H, W] -> normalised float32 [B, 3, resolution, resolution]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(images.shape)}")
        x = images.to(device=self.mean.device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x / 255.0 - self.mean.float()) / self.std.float()
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False,
                              antialias=False)
        return x

    def features(self, inputs: torch.Tensor) -> TeacherFeatures:
        parameter = self.model.cls_token
        tokens = self.model.forward_features(inputs.to(device=parameter.device, dtype=parameter.dtype))
        patches = tokens[:, self.num_prefix_tokens:]
        h, w = inputs.shape[-2] // self.patch_size, inputs.shape[-1] // self.patch_size
        patches = patches.transpose(1, 2).reshape(tokens.shape[0], self.dim, h, w)
        return TeacherFeatures(cls=tokens[:, 0].float(), patches=patches.float())

    def train(self, mode: bool = True) -> TimmViTTeacher:
        """The wrapped network stays in eval mode whatever the enclosing module does."""
        super().train(mode)
        self.model.eval()
        return self

    def config(self) -> dict:
        return {"model": self.name, "resolution": self.resolution, "mean": list(self.mean_values),
                "std": list(self.std_values), "source": self.source, "weights": WEIGHTS_FILE}

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        super().save(directory)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(Path(directory) / WEIGHTS_FILE), metadata={"model": self.name, "layout": "timm"})

    @classmethod
    def from_directory(cls, directory: str | Path, config: dict | None = None) -> TimmViTTeacher:
        """Rebuilds a saved teacher from its own weight copy (offline), never from the original source.
        `config` is teacher.json's content (read from the directory when not given)."""
        directory = Path(directory)
        if config is None:
            config_file = directory / "teacher.json"
            if not config_file.is_file():
                raise FileNotFoundError(f"no teacher in {directory}: teacher.json is missing")
            config = json.loads(config_file.read_text())
        if config.get("kind", KIND) != KIND:
            raise ValueError(f"teacher in {directory} is a {config.get('kind')!r}, not a {KIND!r}")
        weights = directory / config.get("weights", WEIGHTS_FILE)
        if not weights.is_file():
            raise FileNotFoundError(f"teacher in {directory} is a {KIND} but its weight copy {weights} is missing "
                                    f"(written by TimmViTTeacher.save; originally from {config.get('source')!r})")
        model = create_model(config["model"], config["resolution"])
        try:
            load_weights(model, read_weights(weights))
        except ValueError as error:
            raise ValueError(f"{weights} does not match timm {config['model']!r}: {error}") from error
        return cls(model, name=config["model"], mean=config.get("mean"), std=config.get("std"),
                   source=config.get("source"))

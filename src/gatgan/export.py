"""A trained generator and its tokenizer's decoder as graphs other runtimes load: a torch.export
ExportedProgram (`.pt2`, loadable with `torch.export.load` without gatgan) or ONNX (`.onnx`, for
onnxruntime, TensorRT and friends), each with a dynamic batch size.

Two graphs rather than one, because they are used apart: the generator (z [B, z_dim] float32 and
class y [B] int64 -> decoder-ready latents [B, C, h, w]: mapping, truncation towards the class's
average style if asked, synthesis and the latent scaling undone) and the decoder (latents -> images
[B, channels, H, W] in [-1, 1]). Chained they give what `gatgan sample` gives before its rounding to
uint8. Seeds stay outside: z for seed s is `gatgan.sample.seeded_normal([s], z_dim)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .sample import Sampler

FORMATS = {"exported-program": ".pt2", "onnx": ".onnx"}
PARITY_BATCH = 3  # not the traced batch (2), so the check also exercises the dynamic batch size


class GeneratorGraph(nn.Module):
    """(z, y) -> decoder-ready latents, with the truncation fixed at export."""

    def __init__(self, sampler: Sampler, truncation: float):
        super().__init__()
        self.generator, self.scaling, self.truncation = sampler.generator, sampler.scaling, truncation

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scaling.denormalize(self.generator(z, y, truncation=self.truncation))


class DecoderGraph(nn.Module):
    def __init__(self, sampler: Sampler):
        super().__init__()
        self.tokenizer = sampler.tokenizer

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(latents)


@dataclass
class Exported:
    path: Path
    max_abs_error: float  # the exported graph against PyTorch on a fresh batch


def _example_inputs(sampler: Sampler, batch: int, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(generator inputs, decoder input) of `batch` samples."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, sampler.generator.z_dim, generator=generator)
    y = torch.randint(0, len(sampler.class_names), (batch,), generator=generator)
    latents = GeneratorGraph(sampler, 1.0)(z, y)
    return (z, y), latents


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, fmt: str) -> None:
    module.eval()  # the wrappers are fresh modules (training mode); what they wrap is already in eval mode
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in inputs)
    if fmt == "exported-program":
        torch.export.save(torch.export.export(module, inputs, dynamic_shapes=dynamic), path)
    else:
        torch.onnx.export(module, inputs, path, dynamo=True, dynamic_shapes=dynamic, external_data=False)


def _run_exported(path: Path, fmt: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if fmt == "exported-program":
        return torch.export.load(path).module()(*inputs)
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the ONNX parity check needs onnxruntime: pip install 'gatgan[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: tensor.numpy() for arg, tensor in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def export_model(sampler: Sampler, out: str | Path, fmt: str = "exported-program",
                 truncation: float = 1.0) -> dict[str, Exported]:
    """Writes `generator` and `decoder` graphs in `fmt` into `out` (on the CPU, fp32), and checks each
    against the PyTorch modules on a batch of another size; returns their paths and errors."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
        except ImportError:
            raise ImportError("ONNX export needs onnx and onnxscript: pip install 'gatgan[export]'") from None
    sampler.generator.cpu().float().eval()
    sampler.tokenizer.cpu().float().eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graphs = {"generator": GeneratorGraph(sampler, truncation), "decoder": DecoderGraph(sampler)}
    traced, checked = _example_inputs(sampler, 2), _example_inputs(sampler, PARITY_BATCH, seed=1)
    inputs = {"generator": (traced[0], checked[0]), "decoder": ((traced[1],), (checked[1],))}
    exported = {}
    with torch.no_grad():
        for name, module in graphs.items():
            path = out / f"{name}{FORMATS[fmt]}"
            example, fresh = inputs[name]
            _export(module, example, path, fmt)
            error = (_run_exported(path, fmt, fresh) - module(*fresh)).abs().max().item()
            exported[name] = Exported(path, error)
    return exported

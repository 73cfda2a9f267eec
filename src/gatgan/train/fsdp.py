"""train.strategy=fsdp: G and D sharded with FSDP2 (`fully_shard` per transformer block, then the
root), and the few operations of the trainer that differ from DDP's. Each helper also accepts a
replicated (plain or DDP) module and then does what the DDP trainer always did, so the trainer
calls them without asking which strategy runs.

Checkpoints keep the one layout of both strategies: full state dicts gathered on rank 0 (one
safetensors file per network; optimiser states keyed by parameter index, as `Optimizer.state_dict`
keys them). `gatgan sample` and `GAT.from_pretrained` read them unchanged and a run may switch
strategy on resume. That is simpler than sharded DCP files, and fine for models that fit in one
host's CPU memory, which GAT-XL does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

# Saving: whole tensors on rank 0's CPU (other ranks get empty dicts). Loading: every rank reads the
# checkpoint file itself (as under DDP), so each keeps its own slice without a broadcast.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


def shard(model: nn.Module, bf16: bool) -> FSDPModule:
    """Shards every block of `model.blocks`, then the rest (embeddings, heads) at the root. Under bf16
    the parameters are gathered in bf16 and the gradients reduced in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Within it, a backward only accumulates local gradients unless `enabled` (the last micro-batch
    of an accumulation): DDP's `no_sync`, FSDP2's `set_requires_gradient_sync`."""
    if enabled:
        return contextlib.nullcontext()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return model.no_sync()


@contextlib.contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`, returning a plain tensor: over sharded gradients the norm is a replicated
    DTensor, which the statistics and the finiteness check should not have to know about."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class Gathered:
    """What `EMA.update` reads of a sharded module: its parameters whole (one all-gather each, so
    every rank must update its EMA) and its buffers, which FSDP leaves replicated. The EMA thus
    stays a plain full copy on every rank, which sampling and the monitors use as before."""

    def __init__(self, model: nn.Module):
        self.model = model

    def parameters(self) -> Iterator[torch.Tensor]:
        return (p.full_tensor() if isinstance(p, DTensor) else p for p in self.model.parameters())

    def buffers(self) -> Iterator[torch.Tensor]:
        return self.model.buffers()


def ema_source(model: nn.Module) -> nn.Module | Gathered:
    return Gathered(model) if isinstance(model, FSDPModule) else model


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with whole tensors; a collective for a sharded module, whose result only rank 0
    holds (the one that writes checkpoints)."""
    return get_model_state_dict(model, options=_GATHER) if isinstance(model, FSDPModule) else model.state_dict()


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """`load_state_dict` from whole tensors; a sharded module keeps its slice of each."""
    if isinstance(model, FSDPModule):
        set_model_state_dict(model, weights, options=_SCATTER)
    else:
        model.load_state_dict(weights)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with whole tensors; a collective for a sharded module, whose result
    only rank 0 holds."""
    if not isinstance(model, FSDPModule):
        return optimizer.state_dict()
    state = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    return _keyed_by_index(state) if state else state


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict` from a full, index-keyed state; a sharded module keeps its slices."""
    if isinstance(model, FSDPModule):
        set_optimizer_state_dict(model, optimizer, _keyed_by_name(state, model, optimizer), options=_SCATTER)
    else:
        optimizer.load_state_dict(state)


def _keyed_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """DCP keys parameters by name; `Optimizer.state_dict` numbers them in param-group order."""
    index = {name: i for i, name in enumerate(n for group in state["param_groups"] for n in group["params"])}
    return _rekeyed(state, index)


def _keyed_by_name(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    names = {param: name for name, param in model.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    return _rekeyed(state, dict(enumerate(order)))


def _rekeyed(state: dict[str, Any], key: dict) -> dict[str, Any]:
    return {"state": {key[k]: v for k, v in state["state"].items()},
            "param_groups": [group | {"params": [key[k] for k in group["params"]]} for group in state["param_groups"]]}

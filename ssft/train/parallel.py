"""Sharded data parallelism (FSDP2) for the training loop, without Ray.

``wrap_fsdp(net)`` shards a ``SequenceNLL`` (``ssft.train.loop``) with
``torch.distributed.fsdp.fully_shard``: one FSDP unit per decoder layer, plus the root
unit (embeddings, final norm, output head). It needs an initialised default process group
(gloo on CPU, NCCL on GPU) and shards in place: build the optimizer AFTER wrapping, because
``fully_shard`` replaces every parameter with a sharded DTensor.

What changes for the loop when the model is sharded (``is_sharded``):

- every forward is a collective (each unit all-gathers its parameters), so every rank runs
  the same number of forwards, the no-grad cost pass included, and the cost pass goes
  through the wrapped module: the root unit's parameters are only whole inside its forward;
- gradients are reduce-scattered (averaged over ranks, like DDP) after every backward;
- the gradient norm is a sum over shards (``clip_grad_norm``);
- a checkpoint's full weights and optimizer state are gathered collectively on every rank
  (``full_model_state`` / ``full_optimizer_state``) and written by rank 0; resuming loads
  the full optimizer state back into the shards (``load_full_optimizer_state``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor

_FULL_OPTIONS: dict[str, Any] = {"full_state_dict": True, "cpu_offload": True}


def _decoder_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: every ``ModuleList`` child of the backbone (``layers``/``h``)."""
    lm = getattr(net, "lm", net)
    backbone = getattr(lm, "base_model", lm)
    layers = [
        block
        for child in backbone.children()
        if isinstance(child, torch.nn.ModuleList)
        for block in child
    ]
    if not layers:
        raise ValueError(
            f"wrap_fsdp: found no decoder layers (a ModuleList) in {type(backbone).__name__}; "
            "FSDP would shard the model as one unit. Use train.parallelism=ddp for this model."
        )
    return layers


def wrap_fsdp(net: torch.nn.Module) -> torch.nn.Module:
    """Shard ``net`` over all ranks with FSDP2 (per decoder layer, then the root); in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():
        raise RuntimeError("wrap_fsdp needs an initialised torch.distributed process group")
    device = next(net.parameters()).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in _decoder_layers(net):
        fully_shard(layer, mesh=mesh)
    return fully_shard(net, mesh=mesh)


def is_sharded(module: torch.nn.Module) -> bool:
    """True when ``module`` was wrapped by ``fully_shard`` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also works on sharded (DTensor) gradients.

    Returns the total L2 norm over all ranks' shards as a plain tensor (the same on every
    rank), like ``torch.nn.utils.clip_grad_norm_`` does for replicated gradients.
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()  # the partial (per-shard) norms, reduced over ranks
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def full_model_state(net: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Whole weights on CPU, on rank 0 (other ranks get ``{}``); a collective on every rank.

    ``prefix`` is stripped from the keys (``"lm."`` turns ``SequenceNLL`` keys into the
    language model's own, as ``save_pretrained(state_dict=...)`` expects).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(net, options=StateDictOptions(**_FULL_OPTIONS))
    return {k.removeprefix(prefix): v for k, v in state.items()}


def full_optimizer_state(net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state on rank 0 (``{}`` elsewhere); a collective on every rank.

    Keyed by parameter index, exactly like ``optimizer.state_dict()`` of an unsharded model,
    so checkpoints look the same under DDP and FSDP.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    state = get_optimizer_state_dict(net, optimizer, options=StateDictOptions(**_FULL_OPTIONS))
    if not state.get("param_groups"):
        return {}
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        groups.append(
            {**group, "params": [index.setdefault(n, len(index)) for n in group["params"]]}
        )
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a full, index-keyed optimizer state (every rank has read it) into the shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = {id(p): n for n, p in net.named_parameters()}
    fqns = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {fqns[i]: v for i, v in state["state"].items()},
        "param_groups": [
            {**group, "params": [fqns[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        net, optimizer, optim_state_dict=by_name, options=StateDictOptions(full_state_dict=True)
    )

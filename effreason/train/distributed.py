"""Data parallelism under ``torchrun``: by default DDP with gloo on CPU, FSDP2 with NCCL on GPUs
(``--data-parallel fsdp2`` shards on the CPU too, with gloo: how FSDP2 is tested without a GPU).

Each rank samples whole prompt groups (its contiguous share of the step's prompts), so the
paper's group statistics never cross ranks; gradients are averaged by the wrapper and metrics
by :meth:`DistributedContext.mean`. Without ``torchrun`` (``WORLD_SIZE`` unset) everything
here is a no-op on a single process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


DATA_PARALLEL = ("auto", "ddp", "fsdp2")


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    sharded: bool = False  # FSDP2 (parameters, gradients and optimizer state sharded) rather than DDP

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (their count divides by the world size)."""
        if len(items) % self.world_size:
            raise ValueError(f"the number of prompts per step ({len(items)}) must be divisible by the world size ({self.world_size})")
        share = len(items) // self.world_size
        return items[self.rank * share:(self.rank + 1) * share]

    def mean(self, values: dict[str, float | None]) -> dict[str, float | None]:
        """Average of each value over ranks (None, a statistic no rank has, stays None)."""
        if not self.enabled or not values:
            return values
        names = sorted(name for name, value in values.items() if value is not None)
        tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return {**values, **{name: float(v) / self.world_size for name, v in zip(names, tensor.tolist())}}

    def gather(self, items: list) -> list:
        """Every rank's ``items``, concatenated in rank order (the same list on every rank)."""
        if not self.enabled:
            return items
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def all_finite(self, finite: bool) -> bool:
        """True only when every rank saw a finite loss and gradient."""
        if not self.enabled:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=self._collective_device)
        dist.all_reduce(flag)
        return float(flag) == 0.0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(device: torch.device, data_parallel: str = "auto") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA); ``data_parallel``:
    ``auto`` (FSDP2 on CUDA, DDP on the CPU), ``ddp`` or ``fsdp2``."""
    if data_parallel not in DATA_PARALLEL:
        raise ValueError(f"data_parallel must be one of {DATA_PARALLEL}, got {data_parallel!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device,
                              sharded=shards_parameters(data_parallel, device.type))


def shards_parameters(data_parallel: str, device_type: str) -> bool:
    """Whether ``data_parallel`` means FSDP2 on ``device_type``: ``fsdp2``, or ``auto`` on CUDA."""
    return data_parallel == "fsdp2" or (data_parallel == "auto" and device_type == "cuda")


def teardown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_policy(policy: torch.nn.Module, context: DistributedContext, compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """DDP, or FSDP2 (``fully_shard`` per decoder layer, then the root) when ``context.sharded``; as-is alone.

    Under FSDP2 the float32 master parameters are gathered in ``compute_dtype`` and gradients reduced
    in float32 (``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=float32)``).
    """
    if not context.enabled:
        return policy
    if not context.sharded:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(policy)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    precision = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in policy.model.model.layers:
        fully_shard(layer, mp_policy=precision)
    fully_shard(policy, mp_policy=precision)
    return policy


@contextlib.contextmanager
def gathered_for_sampling(policy: torch.nn.Module, context: DistributedContext):
    """Full parameters on every rank while the sampler runs (FSDP2 unshard/reshard; no-op otherwise)."""
    sharded = [m for m in policy.modules() if hasattr(m, "unshard") and hasattr(m, "reshard")]
    if not context.enabled or not context.sharded or not sharded:
        yield
        return
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()


def full_model_state(model: torch.nn.Module, context: DistributedContext) -> dict:
    """The model's full state dict (gathered from FSDP2 shards on CUDA), on CPU."""
    if context.enabled and context.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def full_optimizer_state(model: torch.nn.Module, optimizer, context: DistributedContext) -> dict:
    """The optimizer state to checkpoint (full state dict under FSDP2)."""
    if context.enabled and context.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict, context: DistributedContext) -> None:
    """Restore a checkpoint's optimizer state: the full, name-keyed state dict of :func:`full_optimizer_state`
    is sharded back onto FSDP2's parameters (``set_optimizer_state_dict``); elsewhere a plain load."""
    if context.enabled and context.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def parameters_in_sync(model: torch.nn.Module, context: DistributedContext) -> bool:
    """Whether every rank holds the same weights (DDP), by comparing float64 fingerprints
    ``(sum w, sum w^2, sum i * w)`` of each parameter across ranks; True on one process or under FSDP2."""
    if not context.enabled or context.sharded:
        return True
    rows = []
    for parameter in model.parameters():
        values = parameter.detach().to(torch.float64).flatten()
        index = torch.arange(values.numel(), dtype=torch.float64) / max(values.numel(), 1)
        rows.append(torch.stack([values.sum(), (values * values).sum(), (index * values).sum()]))
    fingerprint = torch.stack(rows)  # (P, 3)
    gathered = [torch.empty_like(fingerprint) for _ in range(context.world_size)]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])

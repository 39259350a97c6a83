"""Exact memory accounting for benchmarks and tests.

Peak resident memory is noisy (allocator caching, other processes); the bytes
autograd keeps for the backward pass are exact and deterministic, and they are
what decides whether a layer fits in memory at training time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and count the bytes of the tensors autograd saves for backward.

    Tensors that share storage (views of one padded tensor, say) are counted once,
    by their whole storage, as memory is held by storages. Returns ``fn``'s
    result and the byte count.
    """
    storages: dict[tuple[torch.device, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(storages.values())

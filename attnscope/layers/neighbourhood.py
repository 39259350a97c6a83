"""Neighbourhood attention, the computation inside local self-attention, in three formulations.

Every pixel attends to the k x k neighbourhood around it: per head, the dot product
of its (already scaled) query with each neighbour's key, plus a relative position
term (the first half of the query's channels score the row offset, the second half
the column offset), softmax over the neighbours inside the image, weighted sum of
their values. All three compute exactly that, and the tests hold the fast two to
the reference within 1e-5, forward, every gradient and the "attention received" map:

- ``reference`` (:func:`neighbourhood_attention`): one shifted view of the padded
  keys and values per offset, plain autograd. Short and easy to check; its backward
  is slow, because autograd turns each of the 2k^2 shifted slices into a zero-filled
  copy of the whole padded tensor.
- ``shifted`` (:class:`ShiftedNeighbourhoodAttention`): the same shifted views with a
  hand-written backward that accumulates into one buffer in place, computed in
  float32 (bfloat16 elementwise kernels are three times slower on the CPU).
- ``dense``: every query is scored against every pixel with batched matrix products
  and the pixels outside its window masked. Its cost grows with (H*W)^2 and hardly
  with the head width; ``shifted``'s with H*W * k^2 * head width.

``auto`` picks ``dense`` where that comparison favours it, ``2 H W < head_dim k^2`` on
maps of at most 256 pixels (beyond, the score matrices leave the cache), and
``shifted`` elsewhere: with k = 7, dense for maps of 7 x 7 and smaller at 4 channels
a head, and for 14 x 14 from 16 channels a head (``benchmarks/local_attention.py``,
part ``crossover``, measures both at each head width and size).

A blocked formulation (HaloNet's query tiles attending to their halo through batched
matrix products) was probed and not kept: it lost to ``shifted`` at 4-16 channels a head
(the products are too thin for the matrix kernels, and the halo makes the score tensor
3.4 times larger), and won only at 32 channels a head on 28 x 28 maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional as F

from attnscope.errors import ConfigError

IMPLEMENTATIONS = ("auto", "shifted", "dense", "reference")
DENSE_MAX_POSITIONS = 256


def neighbourhood_mask(height: int, width: int, kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(k*k, H, W) bool: True where offset ``o`` of pixel (y, x) lies inside the image.

    Offset ``o = a * k + b`` points from (y, x) to (y + a - k//2, x + b - k//2).
    """
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, device=device) - radius
    rows = torch.arange(height, device=device)[None, :] + offsets[:, None]  # (k, H)
    cols = torch.arange(width, device=device)[None, :] + offsets[:, None]  # (k, W)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    mask = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (k, k, H, W)
    return mask.reshape(kernel_size * kernel_size, height, width)


def relative_scores(
    query: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offset scores of (B, heads, d, H, W) queries: two (B, heads, k, H, W) tensors."""
    half = query.shape[2] // 2
    rows = torch.einsum("bhdyx,ad->bhayx", query[:, :, :half], rel_rows)
    cols = torch.einsum("bhdyx,ad->bhayx", query[:, :, half:], rel_cols)
    return rows, cols


def neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: neighbourhood attention on (B, heads, d, H, W) tensors, plain autograd.

    ``query`` must already be scaled. ``rel_rows`` and ``rel_cols`` are (k, d/2)
    embeddings of the row and column offsets. Returns the output (B, heads, d, H, W)
    and the attention weights (B, heads, k*k, H, W) in the query's dtype.
    """
    *_, height, width = query.shape
    radius = kernel_size // 2
    pad = (radius, radius, radius, radius)
    key_padded = F.pad(key, pad)
    value_padded = F.pad(value, pad)

    logits = torch.stack(
        [
            (query * key_padded[..., a : a + height, b : b + width]).sum(dim=2)
            for a in range(kernel_size)
            for b in range(kernel_size)
        ],
        dim=2,
    )
    row_scores, col_scores = relative_scores(query, rel_rows, rel_cols)
    relative = (row_scores[:, :, :, None] + col_scores[:, :, None, :]).flatten(2, 3)
    outside = ~neighbourhood_mask(height, width, kernel_size, device=query.device)
    logits = (logits + relative).masked_fill(outside, float("-inf"))
    # The centre offset is always inside, so no softmax row is all -inf.
    attention = F.softmax(logits, dim=2, dtype=torch.float32).to(query.dtype)

    output = None
    for offset in range(kernel_size * kernel_size):
        a, b = divmod(offset, kernel_size)
        term = attention[:, :, offset : offset + 1] * value_padded[..., a : a + height, b : b + width]
        output = term if output is None else output + term
    assert output is not None
    return output, attention


def attention_received(attention: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Attention each pixel receives, averaged over all queries: (B, heads, H, W).

    ``attention`` is (B, heads, k*k, H, W). Each query's weights sum to 1, so the map
    sums to 1 over H x W.
    """
    *_, positions, height, width = attention.shape
    received = None
    for offset in range(positions):
        a, b = divmod(offset, kernel_size)
        # Query (y, x) with offset (a, b) lands on padded position (y + a, x + b).
        shifted = F.pad(attention[:, :, offset], (b, kernel_size - 1 - b, a, kernel_size - 1 - a))
        received = shifted if received is None else received + shifted
    assert received is not None
    radius = kernel_size // 2
    return received[..., radius : radius + height, radius : radius + width] / (height * width)


def _view_at(padded: torch.Tensor, offset: int, kernel_size: int, height: int, width: int) -> torch.Tensor:
    """The padded tensor seen from neighbour ``offset``: an (..., H, W) view, no copy."""
    a, b = divmod(offset, kernel_size)
    return padded[..., a : a + height, b : b + width]


def _shifted_views(
    padded: torch.Tensor, kernel_size: int, height: int, width: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, view) for every offset."""
    for offset in range(kernel_size * kernel_size):
        yield offset, _view_at(padded, offset, kernel_size, height, width)


class ShiftedNeighbourhoodAttention(torch.autograd.Function):
    """:func:`neighbourhood_attention` with a backward written out, accumulating in place.

    Inputs and outputs as the reference's, computed in float32 whatever their dtype;
    the output is cast back to the query's dtype, the attention weights stay float32.
    """

    @staticmethod
    def forward(ctx: Any, query, key, value, rel_rows, rel_cols, kernel_size: int):
        inputs = (query, key, value, rel_rows, rel_cols)
        ctx.dtypes = tuple(t.dtype for t in inputs)  # each gradient goes back in its input's dtype
        # Contiguous (B, heads, d, H, W): from a channels_last network the views are
        # strided, and every pass over them ran at half speed.
        query, key, value, rel_rows, rel_cols = (
            t.to(torch.float32, memory_format=torch.contiguous_format).contiguous() for t in inputs
        )
        batch, heads, _, height, width = query.shape
        radius = kernel_size // 2
        pad = (radius, radius, radius, radius)
        key_padded, value_padded = F.pad(key, pad), F.pad(value, pad)
        logits = query.new_empty(batch, heads, kernel_size * kernel_size, height, width)
        for offset, neighbour_key in _shifted_views(key_padded, kernel_size, height, width):
            torch.sum(query * neighbour_key, dim=2, out=logits[:, :, offset])
        row_scores, col_scores = relative_scores(query, rel_rows, rel_cols)
        by_offset = logits.view(batch, heads, kernel_size, kernel_size, height, width)
        by_offset.add_(row_scores[:, :, :, None]).add_(col_scores[:, :, None, :])
        logits.masked_fill_(~neighbourhood_mask(height, width, kernel_size, device=query.device), float("-inf"))
        attention = torch.softmax(logits, dim=2)
        output = torch.zeros_like(query)
        for offset, neighbour_value in _shifted_views(value_padded, kernel_size, height, width):
            output.addcmul_(attention[:, :, offset : offset + 1], neighbour_value)
        ctx.save_for_backward(query, key_padded, value_padded, attention, rel_rows, rel_cols)
        ctx.kernel_size = kernel_size
        return output.to(ctx.dtypes[0]), attention

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output, grad_attention):
        query, key_padded, value_padded, attention, rel_rows, rel_cols = ctx.saved_tensors
        kernel_size = ctx.kernel_size
        *_, height, width = query.shape
        grad_output = grad_output.float().contiguous()
        grad_weights = torch.empty_like(attention)
        grad_value_padded = torch.zeros_like(value_padded)
        for offset, neighbour_value in _shifted_views(value_padded, kernel_size, height, width):
            torch.sum(grad_output * neighbour_value, dim=2, out=grad_weights[:, :, offset])
            _view_at(grad_value_padded, offset, kernel_size, height, width).addcmul_(
                attention[:, :, offset : offset + 1], grad_output
            )
        if grad_attention is not None:
            grad_weights += grad_attention
        grad_logits = torch._softmax_backward_data(grad_weights, attention, 2, torch.float32)
        grad_query, grad_key_padded, grad_rel_rows, grad_rel_cols = _logit_gradients(
            grad_logits, query, key_padded, rel_rows, rel_cols, kernel_size
        )
        radius = kernel_size // 2
        inner = (..., slice(radius, radius + height), slice(radius, radius + width))
        grads = (grad_query, grad_key_padded[inner], grad_value_padded[inner], grad_rel_rows, grad_rel_cols)
        return (*(grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes, strict=True)), None)


def _logit_gradients(
    grad_logits: torch.Tensor,
    query: torch.Tensor,
    key_padded: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the query, the padded key and both offset tables from the logits' gradient."""
    batch, heads, head_dim, height, width = query.shape
    half = head_dim // 2
    grad_query = torch.zeros_like(query)
    grad_key_padded = torch.zeros_like(key_padded)
    for offset, neighbour_key in _shifted_views(key_padded, kernel_size, height, width):
        weight = grad_logits[:, :, offset : offset + 1]
        grad_query.addcmul_(weight, neighbour_key)
        _view_at(grad_key_padded, offset, kernel_size, height, width).addcmul_(weight, query)
    by_offset = grad_logits.view(batch, heads, kernel_size, kernel_size, height, width)
    grad_rows, grad_cols = by_offset.sum(dim=3), by_offset.sum(dim=2)
    grad_query[:, :, :half] += torch.einsum("bhayx,ad->bhdyx", grad_rows, rel_rows)
    grad_query[:, :, half:] += torch.einsum("bhayx,ad->bhdyx", grad_cols, rel_cols)
    grad_rel_rows = torch.einsum("bhayx,bhdyx->ad", grad_rows, query[:, :, :half])
    grad_rel_cols = torch.einsum("bhayx,bhdyx->ad", grad_cols, query[:, :, half:])
    return grad_query, grad_key_padded, grad_rel_rows, grad_rel_cols


def _dense_offsets(size: int, kernel_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) along one axis: the offset index of key from query (clamped) and 0/-inf outside the window."""
    radius = kernel_size // 2
    positions = torch.arange(size, device=device)
    offset = positions[None, :] - positions[:, None] + radius
    outside = (offset < 0) | (offset >= kernel_size)
    bias = torch.zeros(size, size, device=device).masked_fill(outside, float("-inf"))
    return offset.clamp(0, kernel_size - 1), bias


def dense_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbourhood attention as masked attention over the whole map, in float32.

    Same inputs as :func:`neighbourhood_attention`. Returns the output (B, heads, d, H, W)
    in the query's dtype and the weights (B * heads, H*W queries, H*W keys), float32.
    """
    dtype = query.dtype
    query, key, value, rel_rows, rel_cols = (t.float() for t in (query, key, value, rel_rows, rel_cols))
    batch, heads, head_dim, height, width = query.shape
    positions = height * width
    flat = batch * heads
    logits = torch.bmm(query.reshape(flat, head_dim, positions).transpose(1, 2), key.reshape(flat, head_dim, positions))
    row_scores, col_scores = relative_scores(query, rel_rows, rel_cols)  # (B, heads, k, H, W)
    row_offset, row_bias = _dense_offsets(height, kernel_size, query.device)
    col_offset, col_bias = _dense_offsets(width, kernel_size, query.device)
    row_scores = row_scores.reshape(flat, kernel_size, height, width).permute(0, 2, 3, 1)  # (N, H, W, k)
    col_scores = col_scores.reshape(flat, kernel_size, height, width).permute(0, 2, 3, 1)
    rows = row_scores.gather(3, row_offset[None, :, None, :].expand(flat, height, width, height))
    cols = col_scores.gather(3, col_offset[None, None, :, :].expand(flat, height, width, width))
    rows = rows + row_bias[None, :, None, :]  # (N, query y, query x, key y)
    cols = cols + col_bias[None, None, :, :]  # (N, query y, query x, key x)
    logits = logits.view(flat, height, width, height, width) + rows[..., :, None] + cols[..., None, :]
    attention = torch.softmax(logits.view(flat, positions, positions), dim=-1)
    output = torch.bmm(value.reshape(flat, head_dim, positions), attention.transpose(1, 2))
    return output.view(batch, heads, head_dim, height, width).to(dtype), attention


def dense_attention_received(attention: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """The received map (B, heads, H, W) from :func:`dense_attention`'s weights."""
    received = attention.sum(dim=1) / (height * width)
    return received.view(batch, -1, height, width)


def choose_implementation(height: int, width: int, kernel_size: int, head_dim: int) -> str:
    """What ``auto`` runs: ``dense`` where its (H*W)^2 scores cost less than ``shifted``'s k^2 passes."""
    positions = height * width
    if positions <= DENSE_MAX_POSITIONS and 2 * positions < head_dim * kernel_size * kernel_size:
        return "dense"
    return "shifted"


def check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"local attention implementation={implementation!r}: use one of {', '.join(IMPLEMENTATIONS)}")


def local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    kernel_size: int,
    implementation: str = "auto",
    received: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Neighbourhood attention by the chosen formulation: the output and, if ``received``, the received map."""
    check_implementation(implementation)
    *_, head_dim, height, width = query.shape
    if implementation == "auto":
        implementation = choose_implementation(height, width, kernel_size, head_dim)
    if implementation == "reference":
        output, weights = neighbourhood_attention(query, key, value, rel_rows, rel_cols, kernel_size)
        return output, attention_received(weights, kernel_size) if received else None
    # Both fast formulations compute in float32 (see the module's docstring), autocast or not.
    with torch.autocast(query.device.type, enabled=False):
        return _fast_attention(query, key, value, (rel_rows, rel_cols), kernel_size, implementation, received)


def _fast_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    relative: tuple[torch.Tensor, torch.Tensor],
    kernel_size: int,
    implementation: str,
    received: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    batch, _, _, height, width = query.shape
    rel_rows, rel_cols = relative
    if implementation == "dense":
        output, weights = dense_attention(query, key, value, rel_rows, rel_cols, kernel_size)
        return output, dense_attention_received(weights, batch, height, width).to(query.dtype) if received else None
    output, weights = ShiftedNeighbourhoodAttention.apply(query, key, value, rel_rows, rel_cols, kernel_size)
    return output, attention_received(weights, kernel_size).to(query.dtype) if received else None

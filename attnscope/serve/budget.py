"""Budgets of bytes that concurrent work of the server may hold at once.

The upload, pixel and byte limits bound one request and one image; they do not
bound how many are held together. Request bodies are read only while their
declared size fits the body budget, and each upload is decoded only once its
working memory (known from its header) fits the decoding budget: the largest
bodies and images are handled a few at a time, while small ones (the usual
photograph or radiograph) pass beside them.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from PIL import Image

from attnscope.data.decode import SIXTEEN_BIT_MODES, decoded_bytes


class BudgetTimeout(Exception):
    """The bytes asked for were not free in time."""


class ByteBudget:
    """``total`` bytes, held by ``async with budget.hold(n)``; a holder waits until ``n`` are free (at most the
    whole budget is asked for, so the largest request waits for the budget to empty rather than forever)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total={total} must be >= 1")
        self.total = self.free = total
        self._released = asyncio.Event()

    @asynccontextmanager
    async def hold(self, amount: int, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold ``amount`` bytes for the block; :class:`BudgetTimeout` when they are not free within ``timeout``
        seconds."""
        amount = min(max(amount, 0), self.total)
        try:
            async with asyncio.timeout(timeout):
                while self.free < amount:  # one event loop: no lock is needed between the check and the taking
                    self._released.clear()
                    await self._released.wait()
        except TimeoutError:
            raise BudgetTimeout(f"{amount} bytes were not free within {timeout} s") from None
        self.free -= amount
        try:
            yield
        finally:
            self.free += amount
            self._released.set()


# decoding's peak over the decoded pixels, as measured on 123 MB RGB PNGs and 64 MB float TIFFs: Pillow holds RGB
# as 4 bytes a pixel; 16-bit and float pixels are converted to 8 bits through a copy, after the file's own buffers
WORKING_FACTOR = 2
WIDE_WORKING_FACTOR = 3


def decoding_memory(data: bytes, byte_limit: int) -> int:
    """What decoding ``data`` takes at its peak, from its header: two or three times its decoded pixels; 0 when
    the decoder will refuse it at once (no header, or pixels above ``byte_limit``): such an upload holds none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                size, wide = decoded_bytes(image), image.mode in ("F", *SIXTEEN_BIT_MODES)
    except Exception:  # the decoder says what is wrong with it; here it only costs nothing
        return 0
    return (WIDE_WORKING_FACTOR if wide else WORKING_FACTOR) * size if size <= byte_limit else 0

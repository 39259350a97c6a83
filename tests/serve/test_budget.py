"""Byte budgets: bodies and decodes wait for room, small ones pass beside large ones, nothing leaks."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from attnscope.serve.budget import WIDE_WORKING_FACTOR, WORKING_FACTOR, BudgetTimeout, ByteBudget, decoding_memory


def test_a_holder_waits_for_room_while_a_small_one_passes_beside():
    order = []

    async def holder(budget, name, amount, seconds):
        async with budget.hold(amount):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
        order.append(f"{name} out")

    async def scenario():
        budget = ByteBudget(100)
        first = asyncio.create_task(holder(budget, "large 1", 70, 0.05))
        await asyncio.sleep(0)
        second = asyncio.create_task(holder(budget, "large 2", 70, 0))
        small = asyncio.create_task(holder(budget, "small", 20, 0))
        await asyncio.gather(first, second, small)
        return budget.free

    assert asyncio.run(scenario()) == 100  # every byte given back
    assert order.index("small in") < order.index("large 1 out") < order.index("large 2 in")


def test_more_than_the_whole_budget_waits_for_it_to_empty_and_a_timeout_is_its_own_error():
    async def scenario():
        budget = ByteBudget(10)
        async with budget.hold(500):  # held as the whole budget
            assert budget.free == 0
            with pytest.raises(BudgetTimeout):
                async with budget.hold(1, timeout=0.05):
                    pass
        return budget.free

    assert asyncio.run(scenario()) == 10


def test_a_holder_cancelled_while_it_holds_gives_its_bytes_back():
    async def scenario():
        budget = ByteBudget(10)

        async def hold_forever():
            async with budget.hold(8):
                await asyncio.sleep(60)

        task = asyncio.create_task(hold_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return budget.free

    assert asyncio.run(scenario()) == 10


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoding_memory_is_read_from_the_header_by_mode():
    rgb = _png(np.zeros((30, 20, 3), np.uint8))
    sixteen = _png(np.zeros((30, 20), np.uint16))
    assert decoding_memory(rgb, 10**9) == WORKING_FACTOR * 30 * 20 * 3
    assert decoding_memory(sixteen, 10**9) == WIDE_WORKING_FACTOR * 30 * 20 * 2
    assert decoding_memory(rgb, 100) == 0  # the decoder refuses it at once: it holds nothing
    assert decoding_memory(b"not an image", 10**9) == 0

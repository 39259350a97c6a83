import numpy as np
import torch

from attnscope.data.cache import DecodedSet
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import Manifest


def decoded_set(count=10, with_masks=True):
    images = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), dtype=np.uint8)
    masks = (images[..., 0] % 2).astype(np.uint8) if with_masks else None
    manifest = Manifest("test", [str(i) for i in range(count)], np.arange(count) % 3, ["a", "b", "c"], images=images)
    return DecodedSet(images, masks, np.arange(count), manifest)


def test_batches_carry_images_labels_rows_and_masks_in_step():
    loader = BatchLoader(decoded_set(), np.arange(10), batch_size=4)
    batches = list(loader)
    assert [len(b["row"]) for b in batches] == [4, 4, 2] and len(loader) == 3
    for batch in batches:
        assert batch["image"].shape[1:] == (3, 4, 4) and batch["image"].dtype == torch.uint8
        torch.testing.assert_close(batch["image"][:, 0, 0, 0].long(), batch["row"])
        torch.testing.assert_close(batch["label"], batch["row"] % 3)
        torch.testing.assert_close(batch["mask"][:, 0, 0, 0].long(), batch["row"] % 2)


def test_shuffling_is_a_seeded_permutation_per_epoch_and_repeats_are_kept():
    rows = np.array([0, 1, 2, 3, 4, 5, 5, 5])  # row 5 oversampled
    loader = BatchLoader(decoded_set(), rows, batch_size=3, shuffle=True, seed=7)
    first = torch.cat([b["row"] for b in loader]).tolist()
    again = torch.cat([b["row"] for b in loader]).tolist()
    loader.set_epoch(1)
    second = torch.cat([b["row"] for b in loader]).tolist()
    assert sorted(first) == sorted(rows.tolist()) and first == again and first != second


def test_drop_last_and_an_index_into_a_larger_cache():
    decoded = decoded_set(10)
    decoded = DecodedSet(decoded.images, decoded.masks, np.array([9, 8, 7]), decoded.manifest.subset([9, 8, 7]))
    loader = BatchLoader(decoded, np.arange(3), batch_size=2, drop_last=True)
    (batch,) = list(loader)
    assert batch["image"][:, 0, 0, 0].tolist() == [8, 9]  # within a batch, rows come in cache order
    assert batch["row"].tolist() == [1, 0] and batch["label"].tolist() == [8 % 3, 9 % 3]


def test_prefetching_gives_the_same_batches():
    plain = BatchLoader(decoded_set(), np.arange(10), batch_size=3, shuffle=True, seed=2)
    threaded = BatchLoader(decoded_set(), np.arange(10), batch_size=3, shuffle=True, seed=2, prefetch=True)
    assert not plain.prefetch and threaded.prefetch
    for a, b in zip(plain, threaded, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_an_abandoned_iteration_stops_its_thread():
    loader = BatchLoader(decoded_set(10, with_masks=False), np.arange(10), batch_size=1, prefetch=True)
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    assert "mask" not in next(iter(loader))


def shards(rows, world_size, even, epoch=3):
    loaders = [
        BatchLoader(
            decoded_set(), rows, batch_size=2, shuffle=True, seed=1, rank=rank, world_size=world_size, even=even
        )
        for rank in range(world_size)
    ]
    for loader in loaders:
        loader.set_epoch(epoch)
    return loaders, [torch.cat([b["row"] for b in loader]).tolist() for loader in loaders]


def test_processes_share_one_epoch_order_without_overlap():
    rows = np.arange(9)
    whole = BatchLoader(decoded_set(), rows, batch_size=2, shuffle=True, seed=1)
    whole.set_epoch(3)
    loaders, parts = shards(rows, 2, even=False)
    assert sorted(parts[0] + parts[1]) == list(range(9))  # every row once, nothing added
    assert set(parts[0]) == set(whole.order()[0::2].tolist())  # batches are sorted inside, not across
    assert [len(p) for p in parts] == [5, 4] and [len(loader.sampler) for loader in loaders] == [5, 4]


def test_even_shards_wrap_around_so_every_process_has_as_many_batches():
    loaders, parts = shards(np.arange(9), 2, even=True)
    assert [len(p) for p in parts] == [5, 5] and len(loaders[0]) == len(loaders[1]) == 3
    assert set(parts[0]) | set(parts[1]) == set(range(9))


def test_lightning_finds_set_epoch_on_the_sampler():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = BatchLoader(decoded_set(), np.arange(10), batch_size=4, shuffle=True)
    _set_sampler_epoch(loader, 5)
    assert loader.sampler.epoch == 5

import gzip

import numpy as np
import pytest

from attnscope import DataError
from attnscope.data.sources import FASHION_MNIST_DIR, from_idx, from_medmnist, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count, compress in (("train", 20, True), ("t10k", 6, False)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            (tmp_path / (name + ".gz" if compress else name)).write_bytes(gzip.compress(data) if compress else data)
    return tmp_path


def test_idx_files_gzip_or_not(idx_folder):
    train, test = from_idx(idx_folder, "train"), from_idx(idx_folder, "test")
    assert train.images.shape == (20, 28, 28) and test.images.shape == (6, 28, 28)
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    both = from_idx(idx_folder, "all")
    assert len(both) == 26 and both.splits[:20] == [None] * 20 and both.splits[20:] == ["test"] * 6
    np.testing.assert_array_equal(both.images[20:], test.images)


def test_truncated_and_foreign_idx_files_are_refused(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3)))
    (tmp_path / "short").write_bytes(good[:-1])
    (tmp_path / "foreign").write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "foreign")
    with pytest.raises(DataError, match="no t10k-images"):
        from_idx(tmp_path, "test")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_is_the_default():
    train, test = from_idx(split="train"), from_idx(split="test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.class_counts().tolist() == [6000] * 10 and test.class_counts().tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"
    assert 60 < train.images.mean() < 80  # Fashion-MNIST's mean intensity is about 72.9


def test_medmnist_single_and_multi_label(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", 8), ("val", 3), ("test", 4)):
        arrays[f"{part}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(n) % 7).reshape(n, 1)
    np.savez(tmp_path / "dermamnist.npz", **arrays)
    derma = from_medmnist(tmp_path / "dermamnist.npz", "val")
    assert derma.images.shape == (3, 28, 28, 3) and derma.labels.tolist() == [0, 1, 2]
    everything = from_medmnist(tmp_path / "dermamnist.npz", "all")
    assert everything.splits.count("test") == 4 and len(everything) == 15
    chest = {k: v for k, v in arrays.items()} | {"train_labels": rng.integers(0, 2, (8, 14))}
    np.savez(tmp_path / "chestmnist.npz", **chest)
    multi = from_medmnist(tmp_path / "chestmnist.npz", "train")
    assert multi.multilabel and multi.labels.shape == (8, 14) and multi.num_classes == 14
    with pytest.raises(DataError, match=r"no \['test_images', 'test_labels'\] array"):
        np.savez(tmp_path / "partial.npz", train_images=arrays["train_images"], train_labels=arrays["train_labels"])
        from_medmnist(tmp_path / "partial.npz", "test")

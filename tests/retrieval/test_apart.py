"""A query's own image and its patient's other images are set apart from its neighbours, and nothing else."""

import numpy as np
import pytest

from attnscope.retrieval.apart import Apart, RowKeys, pixel_digest
from attnscope.retrieval.embed import EmbeddingConfig
from attnscope.retrieval.index import SimilarityIndex

META = {"model": "m", "weights_sha256": "0" * 64}


def gallery(count=120, dim=16, seed=0):
    """Unit vectors and rows: six images to a patient, each with its own digest."""
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        {"id": f"img{i}", "label": "0", "path": "", "source": "s", "group": f"p{i // 6}", "digest": f"d{i}"}
        for i in range(count)
    ]
    return vectors, rows


def reference(query, vectors, rows, k, apart):
    """Brute force: the k most similar rows that are neither the query's image nor of its patient."""
    allowed = [i for i, row in enumerate(rows) if row["digest"] != apart.digest and row["group"] != apart.group]
    order = sorted(allowed, key=lambda i: -float(vectors[i] @ query))
    return order[:k]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "lsh"])
def test_search_sets_apart_the_image_and_its_patient_and_matches_brute_force(kind):
    vectors, rows = gallery()
    index = SimilarityIndex.create(kind, vectors, rows, EmbeddingConfig(), META)
    queries = vectors[[0, 7, 50]]  # three indexed images, queried by their pixels only (no group given)
    apart = [Apart(digest=f"d{i}") for i in (0, 7, 50)]
    positions, similarities = index.search(queries, 5, apart)
    for query, found, one in zip(queries, positions, apart, strict=True):
        group = rows[int(one.digest[1:])]["group"]  # the patient comes from the identical indexed row
        assert all(rows[p]["group"] != group for p in found)
        if kind == "flat":
            assert found.tolist() == reference(query, vectors, rows, 5, Apart(one.digest, group))
    assert (positions >= 0).all() and (similarities < 0.999).all()
    plain, _ = index.search(queries, 5)
    assert plain[:, 0].tolist() == [0, 7, 50]  # without apart, each finds itself first


def test_a_patient_with_more_images_than_k_still_leaves_k_neighbours():
    vectors, rows = gallery(count=60)
    for row in rows[:40]:
        row["group"] = "big"
    index = SimilarityIndex.create("flat", vectors, rows, EmbeddingConfig(), META)
    positions, _ = index.search(vectors[:1], 10, [Apart(group="big")])
    assert (positions >= 40).all() and len(set(positions[0].tolist())) == 10


def test_rows_without_digests_or_groups_set_nothing_apart():
    keys = RowKeys([{"id": "a"}, {"id": "b", "group": "", "digest": ""}])
    found = np.array([[0, 1, -1]])
    assert keys.set_apart(found, [Apart("", "")]).tolist() == [[0, 1, -1]]
    assert keys.extra([Apart("", "")]) == 0


def test_pixel_digest_is_the_same_for_the_same_pixels_in_grey_either_shape():
    image = np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8)
    assert pixel_digest(image) == pixel_digest(image[..., None])
    other = image.copy()
    other[0, 0] ^= 1
    assert pixel_digest(other) != pixel_digest(image)

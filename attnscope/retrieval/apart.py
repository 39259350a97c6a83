"""Neighbours that must be set apart from a query: the query itself, and the other images of its patient.

An image searched against an index that holds it finds itself first (similarity 1.0), and its patient's
other images next: neither is a second opinion. Each indexed row keeps a digest of its decoded pixels and
its group (the patient, where the data name one); a query is matched to rows by the same two keys. A query
whose group is unknown (a loose file) takes the group of the indexed row it is identical to, so a training
image queried by file still has its patient's other images set apart.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pixel_digest(image: np.ndarray) -> str:
    """A fingerprint of decoded pixels (their shape and bytes): the same image under another name has the same."""
    pixels = np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1], -1))  # grey: (H, W, 1) either way
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Apart:
    """What one query's neighbours must not be: rows with its pixels (``digest``) or of its ``group``."""

    digest: str = ""
    group: str = ""


class RowKeys:
    """The digests and groups of an index's rows, counted, for setting rows apart from queries."""

    def __init__(self, rows: Sequence[dict]) -> None:
        self.digests = [str(row.get("digest") or "") for row in rows]
        self.groups = [str(row.get("group") or "") for row in rows]
        self.digest_count = Counter(d for d in self.digests if d)
        self.group_count = Counter(g for g in self.groups if g)
        self.group_of = {d: g for d, g in zip(self.digests, self.groups, strict=True) if d and g}

    def resolve(self, apart: Apart) -> Apart:
        """``apart`` with its group taken from the identical indexed row where it named none."""
        return apart if apart.group else Apart(apart.digest, self.group_of.get(apart.digest, ""))

    def extra(self, aparts: Sequence[Apart]) -> int:
        """How many more candidates to fetch so that ``k`` remain once every query's rows are set apart."""
        return max((self.digest_count[a.digest] + self.group_count[a.group] for a in aparts), default=0)

    def set_apart(self, found: np.ndarray, aparts: Sequence[Apart]) -> np.ndarray:
        """``found`` (Q, C positions) with each query's set-apart rows replaced by -1 (no neighbour)."""
        kept = found.copy()
        for query, apart in enumerate(aparts):
            for column, position in enumerate(found[query].tolist()):
                if position < 0:
                    continue
                same_image = bool(apart.digest) and self.digests[position] == apart.digest
                same_group = bool(apart.group) and self.groups[position] == apart.group
                if same_image or same_group:
                    kept[query, column] = -1
        return kept

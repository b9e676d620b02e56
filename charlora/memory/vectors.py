"""Embeddings held in memory for recall: the store reads a file's vectors once
into a VectorCache and keeps it in step with every write (store.MemoryStore.vectors)."""
from __future__ import annotations

import numpy as np


class VectorCache:
    """Unit vectors and their ids in one growing matrix: appending is amortized
    O(1) (capacity doubles), a search is one matrix-vector product."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.n = 0
        self.distinct = 0  # ids, to size a search's first cut (an id may hold several rows)
        self.checked = 0  # turns up to this id are known to have a vector (retrieve.ensure_vectors)

    def add(self, ids, vecs: np.ndarray) -> None:
        vecs = np.asarray(vecs, dtype=np.float32)
        if self.matrix.shape[1] != vecs.shape[1]:
            self.matrix = np.zeros((0, vecs.shape[1]), dtype=np.float32)
            self.n = 0
        need = self.n + len(vecs)
        if need > len(self.matrix):
            cap = max(need, 2 * len(self.matrix), 64)
            grown = np.zeros((cap, vecs.shape[1]), dtype=np.float32)
            grown[: self.n] = self.matrix[: self.n]
            grown_ids = np.zeros(cap, dtype=np.int64)
            grown_ids[: self.n] = self.ids[: self.n]
            self.matrix, self.ids = grown, grown_ids
        self.matrix[self.n : need] = vecs
        self.ids[self.n : need] = ids
        self.n = need
        self.distinct += len(set(ids))

    def remove(self, ref: int) -> None:
        where = np.flatnonzero(self.ids[: self.n] == ref)
        self.distinct -= bool(len(where))
        for i in where[::-1]:  # the last row moves into the hole
            self.n -= 1
            self.matrix[i], self.ids[i] = self.matrix[self.n], self.ids[self.n]

    def search(self, query: np.ndarray, k: int, skip=frozenset()) -> list[tuple[int, float]]:
        """[(id, cosine)] of the `k` nearest ids, each by its best row, best first, ids in
        `skip` left out."""
        if not self.n:
            return []
        sims = self.matrix[: self.n] @ np.asarray(query, dtype=np.float32)
        # Twice the rows k ids hold on average: one cut nearly always suffices (each more
        # is another pass over every row).
        take = min(self.n, -(-2 * (k + len(skip)) * self.n // max(1, self.distinct)))
        while True:
            # An id may hold several rows (a turn's sentences): widen the cut until it
            # holds k ids, or every row.  Best first, so an id's first row is its best.
            top = np.argpartition(-sims, take - 1)[:take] if take < self.n else np.arange(self.n)
            top = top[np.argsort(-sims[top], kind="stable")]
            out, seen = [], set(skip)
            for i in top:
                ref = int(self.ids[i])
                if ref not in seen:
                    seen.add(ref)
                    out.append((ref, float(sims[i])))
            if len(out) >= k or take == self.n:
                return out[:k]
            take = min(self.n, 2 * take)

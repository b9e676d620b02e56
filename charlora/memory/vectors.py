"""Embeddings held in memory for recall: the store reads a file's vectors once
into a VectorCache and keeps it in step with every write (store.MemoryStore.vectors)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The matrix is held in float16.  A search reads every row, so it is bound by memory
# bandwidth: at 100k chatty turns (274,585 rows of 384) one float32 product read 421 MB
# and took 15.4 ms (numpy, one thread); torch's float16 product reads half and took
# 10.1 ms, with the same 60 nearest rows (a scratch probe, 2026-12-03).  numpy has no
# fast float16 product, hence torch.  The cut found this way is scored again in float32
# (the stored rows upcast, against the float32 query), so a cosine is off by the rows'
# rounding alone (3.2e-5 at most in tests/test_memory_store.py), not by a float16
# result's (2.0e-4 there).
DTYPE = np.float16


class Near(NamedTuple):
    id: int
    cosine: float
    part: int  # which of the id's rows was best: 0 its own, i its i-th sentence (text.parts)


class VectorCache:
    """Unit vectors and their ids in one growing matrix: appending is amortized
    O(1) (capacity doubles), a search is one matrix-vector product."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.parts = np.zeros(0, dtype=np.int16)
        self.matrix = np.zeros((0, 0), dtype=DTYPE)
        self.n = 0
        self.distinct = 0  # ids, to size a search's first cut (an id may hold several rows)
        self.checked = 0  # turns up to this id are known to have a vector (retrieve.ensure_vectors)

    def add(self, ids, vecs: np.ndarray, parts=None) -> None:
        """Rows `vecs` under `ids`; `parts`: each row's part (Near.part), 0 for all if None."""
        vecs = np.asarray(vecs, dtype=np.float32)
        if self.matrix.shape[1] != vecs.shape[1]:
            self.matrix = np.zeros((0, vecs.shape[1]), dtype=DTYPE)
            self.n = 0
        need = self.n + len(vecs)
        if need > len(self.matrix):
            cap = max(need, 2 * len(self.matrix), 64)
            grown = np.zeros((cap, vecs.shape[1]), dtype=DTYPE)
            grown[: self.n] = self.matrix[: self.n]
            grown_ids = np.zeros(cap, dtype=np.int64)
            grown_ids[: self.n] = self.ids[: self.n]
            grown_parts = np.zeros(cap, dtype=np.int16)
            grown_parts[: self.n] = self.parts[: self.n]
            self.matrix, self.ids, self.parts = grown, grown_ids, grown_parts
        self.matrix[self.n : need] = vecs
        self.ids[self.n : need] = ids
        self.parts[self.n : need] = 0 if parts is None else parts
        self.n = need
        self.distinct += len(set(ids))

    def remove(self, ref: int) -> None:
        where = np.flatnonzero(self.ids[: self.n] == ref)
        self.distinct -= bool(len(where))
        for i in where[::-1]:  # the last row moves into the hole
            self.n -= 1
            self.matrix[i], self.ids[i], self.parts[i] = self.matrix[self.n], self.ids[self.n], self.parts[self.n]

    def search(self, query: np.ndarray, k: int, skip=frozenset()) -> list[Near]:
        """The `k` nearest ids, each by its best row, best first, ids in `skip` left out."""
        if not self.n:
            return []
        # Imported here, not at the top: charlora.config imports the memory package, and
        # prepare_dataset.py started 1.7 s slower loading torch for nothing (chat has it by now).
        import torch

        query = np.asarray(query, dtype=np.float32)
        rows = torch.from_numpy(self.matrix[: self.n])
        sims = (rows @ torch.from_numpy(query.astype(DTYPE))).float().numpy()
        # Twice the rows k ids hold on average: one cut nearly always suffices (each more
        # is another pass over every row).
        take = min(self.n, -(-2 * (k + len(skip)) * self.n // max(1, self.distinct)))
        while True:
            # An id may hold several rows (a turn's sentences): widen the cut until it
            # holds k ids, or every row.  Best first, so an id's first row is its best.
            top = np.argpartition(-sims, take - 1)[:take] if take < self.n else np.arange(self.n)
            exact = self.matrix[top].astype(np.float32) @ query
            order = np.lexsort((top, -exact))  # by the float32 cosine; a tie by row
            out, seen = [], set(skip)
            for i, sim in zip(top[order], exact[order]):
                ref = int(self.ids[i])
                if ref not in seen:
                    seen.add(ref)
                    out.append(Near(ref, float(sim), int(self.parts[i])))
            if len(out) >= k or take == self.n:
                return out[:k]
            take = min(self.n, 2 * take)


def searched_rows(items: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray, list[int]]:
    """(ids, rows, parts) for VectorCache.add from {id: its stored rows} (embed.turn_rows).
    A turn of several sentences is searched by its sentences' rows alone: its own row
    is their mean, never the best of them for a question about one, so it only costs
    search time (a quarter of the rows of a chatty memory).  On the tuning split,
    chatty (bench/memory.py --chatty): recall@5 0.881 -> 0.884, paraphrase 0.709 ->
    0.716, multi-hop 0.883 -> 0.892, the other kinds the same.  Its own row stays in
    the file: it marks the turn as embedded, and a turn of one sentence has no other."""
    keep = [(ref, i, rows[i]) for ref, rows in items.items()
            for i in (range(1, len(rows)) if len(rows) > 1 else (0,))]
    return [r for r, _, _ in keep], np.stack([v for _, _, v in keep]), [i for _, i, _ in keep]

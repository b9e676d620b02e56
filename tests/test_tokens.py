"""Token-by-token construction of input_ids / labels / attention_mask."""
import pytest

from charlora.tokens import IGNORE_INDEX, MIN_PROMPT_TOKENS, encode_sample

EOS, BOS = 2, 1


class CharTokenizer:
    """One token per character (id = ord), optional BOS: exact ids by hand."""

    eos_token_id = EOS

    def __init__(self, add_bos: bool):
        self.bos_token_id = BOS if add_bos else None

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [BOS] + ids
        return {"input_ids": ids}


def ids(s):
    return [ord(c) for c in s]


def test_reply_and_eos_are_labelled_context_is_masked():
    enc = encode_sample(CharTokenizer(add_bos=False), "A:hi\nB:", "yo", cutoff_len=64)
    assert enc["input_ids"] == ids("A:hi\nB:") + ids("yo") + [EOS]
    assert enc["labels"] == [IGNORE_INDEX] * 7 + ids("yo") + [EOS]
    assert enc["attention_mask"] == [1] * 10


def test_bos_is_kept_and_masked():
    enc = encode_sample(CharTokenizer(add_bos=True), "B:", "ok", cutoff_len=64)
    assert enc["input_ids"] == [BOS] + ids("B:ok") + [EOS]
    assert enc["labels"] == [IGNORE_INDEX] * 3 + ids("ok") + [EOS]


def test_truncation_drops_the_start_of_the_context_but_keeps_bos_and_reply():
    prompt = "Alice:" + "x" * 40 + "\nBob:"
    enc = encode_sample(CharTokenizer(add_bos=True), prompt, "reply", cutoff_len=30)
    # 30 = BOS + 23 prompt tokens from the end + 5 reply + EOS
    assert enc["input_ids"] == [BOS] + ids(prompt)[-23:] + ids("reply") + [EOS]
    assert enc["labels"] == [IGNORE_INDEX] * 24 + ids("reply") + [EOS]
    assert len(enc["input_ids"]) == 30


def test_an_overlong_reply_keeps_a_minimum_of_prompt_and_loses_its_end():
    prompt = "Alice:" + "x" * 40 + "\nBob:"
    reply = "r" * 100
    enc = encode_sample(CharTokenizer(add_bos=False), prompt, reply, cutoff_len=50)
    assert enc["input_ids"] == ids(prompt)[-MIN_PROMPT_TOKENS:] + ids(reply)[: 50 - MIN_PROMPT_TOKENS]
    assert enc["labels"][:MIN_PROMPT_TOKENS] == [IGNORE_INDEX] * MIN_PROMPT_TOKENS
    assert EOS not in enc["input_ids"]  # the cut reply did not end, so no EOS is taught


def test_short_prompt_is_never_cut():
    enc = encode_sample(CharTokenizer(add_bos=False), "B:", "z" * 20, cutoff_len=10)
    assert enc["input_ids"] == ids("B:") + ids("z" * 8)


def test_collated_batch_pads_per_batch_with_masked_labels(tiny_tokenizers):
    """Real tokenizer (llama-like: BOS, no pad) + the collator training uses."""
    from transformers import DataCollatorForSeq2Seq

    from charlora.models import load_tokenizer

    tok = tiny_tokenizers["llama-like"]
    tok.pad_token = None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        tok = load_tokenizer(d)
    assert tok.pad_token_id == tok.eos_token_id  # filled in for tokenizers without one
    a = encode_sample(tok, "Alice:Good morning.\nBob:", "Hi.", cutoff_len=256)
    b = encode_sample(tok, "Bob:", "Good morning to you, Alice.", cutoff_len=256)
    assert a["input_ids"][0] == tok.bos_token_id and a["input_ids"][-1] == tok.eos_token_id
    prompt_len = len(tok("Alice:Good morning.\nBob:")["input_ids"])
    assert a["labels"] == [IGNORE_INDEX] * prompt_len + a["input_ids"][prompt_len:]
    batch = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")([a, b])
    width = max(len(a["input_ids"]), len(b["input_ids"]))  # per batch, not cutoff_len
    assert batch["input_ids"].shape == (2, width)
    for row, enc in enumerate((a, b)):
        n = len(enc["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == enc["input_ids"]
        assert batch["labels"][row].tolist() == enc["labels"] + [IGNORE_INDEX] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)


def test_cutoff_too_small_is_rejected():
    with pytest.raises(ValueError):
        encode_sample(CharTokenizer(False), "B:", "x", cutoff_len=1)

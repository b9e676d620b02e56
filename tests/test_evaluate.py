"""evaluate.py's metrics, exact where they can be."""

import pytest
import torch

from charlora.dialogue import parse_dialogue
from charlora.evaluate import greedy_replies, other_speaker_samples, reply_loss
from charlora.reply import cut_reply, other_speaker_at, speaks_for_other
from charlora.tokens import encode_sample

SPEAKERS = ["Alice", "Bob", "Sir Toby Belch"]


@pytest.mark.parametrize("text, expected", [
    ("I have two apples.", False),
    ("I have two apples.\nAlice:Thank you.", True),
    ("I have two apples.\nBob:And more.", False),           # the character again is not someone else
    ("Fine. Alice: no more.", True),                         # inline Name:
    ("Fine. Sir Toby Belch\uff1aho!", True),
    ("Fine. Malice: is not a name here.", False),
    ("Note: this is fine", False),                           # unknown name inline
    ("ok\n(Exit)", False),                                   # narration line
    ("Fine.\nCarol:Who am I?", True),                        # an unknown speaker on a later line
    ("Fine.\rAlice:Hm.", True),                              # any dialogue line break
    ("Fine. Alice\n: no", False),                            # the colon must be on the name's line
])
def test_speaks_for_other(text, expected):
    assert speaks_for_other(text, "Bob", SPEAKERS) is expected


@pytest.mark.parametrize("text, at", [
    ("I have two apples.", None),
    ("Fine. Alice: no more.", 6),
    ("Fine.\nBob:More.\nCarol:Who?", 16),
    ("Sir Toby Belch:x\nAlice:y", 0),
])
def test_other_speaker_at_is_where_chat_cuts(text, at):
    """One rule: where evaluation sees someone else speak is where chat's reply
    ends (if that is before the first newline)."""
    assert other_speaker_at(text, "Bob", SPEAKERS) == at
    reply, why = cut_reply(text, "Bob", SPEAKERS)
    newline = min((i for i, ch in enumerate(text) if ch in "\r\n"), default=len(text))
    assert (why == "speaker") == (at is not None and at < newline)
    assert reply == text[: min(newline, len(text) if at is None else at)].strip()


def test_other_speaker_samples_are_prompted_with_their_own_name():
    lines = parse_dialogue("(Enter)\nAlice:hi\nBob:yo\nAlice:bye\n")
    assert other_speaker_samples(lines, "Bob", 2) == [
        {"output": "hi", "input": "(Enter)\nAlice:"},
        {"output": "bye", "input": "Alice:hi\nBob:yo\nAlice:"},
    ]


def test_reply_loss_is_the_token_weighted_mean_over_reply_and_eos(models_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32)
    samples = [{"input": "Alice:Hello.\nBob:", "output": "Good day to you."}, {"input": "Bob:", "output": "Yes."}]
    total, count = 0.0, 0
    for s in samples:  # one at a time, no padding: the reference
        enc = encode_sample(tok, s["input"], s["output"], 64)
        ids = torch.tensor([enc["input_ids"]])
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        for t, label in enumerate(enc["labels"][1:]):
            if label != -100:
                total -= logp[t, label].item()
                count += 1
    assert count == len(tok("Good day to you.", add_special_tokens=False)["input_ids"]) + len(tok("Yes.", add_special_tokens=False)["input_ids"]) + 2
    assert reply_loss(model, tok, samples, 64, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_batched_greedy_replies_equal_one_at_a_time(models_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32)
    samples = [{"input": "Alice:Hello there, how are you?\nBob:", "output": "x"}, {"input": "Bob:", "output": "y"}]
    batched = greedy_replies(model, tok, samples, "Bob", SPEAKERS, max_new_tokens=12, batch_size=2)
    single = [greedy_replies(model, tok, [s], "Bob", SPEAKERS, max_new_tokens=12, batch_size=1)[0] for s in samples]
    assert batched == single
    assert tok.padding_side == "right"  # restored


def test_the_table_says_not_measured_where_nothing_was():
    """It printed "nan" for the others' loss when no other speaker spoke, and
    "0%" repeats and copies of 0 replies, where the summary said "not measured"."""
    import math

    from charlora.evaluate import HEADER, Report

    assert HEADER.split() == ["model", "char", "loss", "other", "loss", "clean", "ends", "EOS", "ends", "other",
                              "spk", "rep4", "copy8", "specif.", "AUC"]
    assert Report("base", 4.4, math.nan, 0, 0, 0, [], 0, 0, None).row().split() == [
        "base", "4.400", "-", "0/0", "0/0", "0/0", "-", "-"]
    assert Report("adapter", 4.07, 4.21, 39, 1, 40, [], 38, 2, 0, specificity=-0.018,
                  attribution_auc=0.55).row().split() == [
        "adapter", "4.070", "4.210", "38/40", "39/40", "1/40", "5%", "0%", "-0.018", "0.550"]

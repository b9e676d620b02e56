"""Line-banded attention (charlora.banded): the layout's exact values, then its
per-reply-token losses against the per-sample encoding (charlora.tokens.encode_sample)
on a tiny LLaMA built from config.

Exact where the approximation does not apply (a one-layer model, or windows
that reach the band's start); with more layers and short windows the shared
context reads further back than a sample, and the test shows that it does.
"""
from __future__ import annotations

import pytest
import torch

from charlora.banded import BandedError, band_allowed, banded_examples, collate_banded
from charlora.dialogue import Line
from charlora.prompt import build_prompt, format_line
from charlora.samples import context_window
from charlora.tokens import IGNORE_INDEX, encode_sample
from conftest import tiny_config


class CharTokenizer:
    """One id per character (ord), EOS 3, optional BOS 2: exact layouts by hand."""

    eos_token_id = 3

    def __init__(self, bos: bool):
        self.bos_token_id = 2 if bos else None

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens and self.bos_token_id else []) + ids}


LINES = [Line("A", "hi"), Line("B", "yo"), Line("A", "ok"), Line("C", "no")]
N, A, B, C, COLON = ord("\n"), ord("A"), ord("B"), ord("C"), ord(":")


def test_layout_exact_values_without_bos():
    """Each line gets a sink in front: a copy of its window's first token at
    that token's position, seeing only itself; the window then holds the
    copy instead of the original, as that token is a sample's first."""
    (band,) = banded_examples(LINES, CharTokenizer(bos=False), "B", rounds=1, cutoff_len=64, band_len=64)
    #                      sink A  :  h  i  \n sink B  :  y  o  EOS
    assert band["input_ids"] == [A, A, COLON, ord("h"), ord("i"), N, A, B, COLON, ord("y"), ord("o"), 3]
    assert band["labels"] == [IGNORE_INDEX] * 9 + [ord("y"), ord("o"), 3]
    assert band["position_ids"] == [0, 0, 1, 2, 3, 4, 0, 5, 6, 7, 8, 9]
    assert band["hidden"] == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert band["window_start"] == [0, 2, 2, 2, 2, 2, 6, 2, 2, 2, 2, 2]
    assert band["sink"] == [0] * 6 + [6] * 6
    allowed = band_allowed(band["window_start"], band["sink"], band["hidden"])
    seen = [i for i, ok in enumerate(allowed[-2].tolist()) if ok]  # "o", predicting EOS
    assert seen == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    seen.sort(key=lambda i: band["position_ids"][i])  # the sink, at position 0, stands first
    sample = encode_sample(CharTokenizer(bos=False), "A:hi\nB:", "yo", 64)
    assert [band["input_ids"][i] for i in seen] == sample["input_ids"][:-1]
    assert [band["position_ids"][i] for i in seen] == list(range(len(sample["input_ids"]) - 1))


def test_layout_hides_eos_shares_its_position_and_gives_each_window_its_bos():
    (band,) = banded_examples(LINES, CharTokenizer(bos=True), "A", rounds=1, cutoff_len=64, band_len=64)
    #        BOS A  :  h  i  EOS \n BOS B  :  y  o  \n BOS A  :  o  k  EOS
    assert band["input_ids"] == [2, A, COLON, 104, 105, 3, N, 2, B, COLON, 121, 111, N, 2, A, COLON, 111, 107, 3]
    assert band["position_ids"] == [0, 1, 2, 3, 4, 5, 5, 0, 6, 7, 8, 9, 10, 5, 11, 12, 13, 14, 15]
    assert band["hidden"] == [1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert band["labels"] == [IGNORE_INDEX] * 3 + [104, 105, 3] + [IGNORE_INDEX] * 10 + [111, 107, 3]
    # line 2 (A:ok) sees line 1 (B:yo) after its own BOS at position 5, not line 0 nor line 0's EOS
    assert band["window_start"][13:] == [13] + [8] * 5 and band["sink"][13:] == [13] * 6
    allowed = band_allowed(band["window_start"], band["sink"], band["hidden"])
    seen = [i for i, ok in enumerate(allowed[17].tolist()) if ok]  # "k", predicting EOS
    assert seen == [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    assert [band["position_ids"][i] for i in sorted(seen, key=lambda i: band["position_ids"][i])] == list(range(5, 15))
    assert allowed[0].tolist() == [True] + [False] * 18  # a BOS sees itself only


@pytest.mark.parametrize("cutoff", [20, 17])
def test_window_is_cut_like_encode_sample_cuts_a_prompt(cutoff):
    """The 25-token body is cut to its end; at 17 the reply alone would leave
    fewer than MIN_PROMPT_TOKENS (16), so encode_sample also cuts the reply to "y"."""
    lines = [Line("C", "abcdefghijklmnopqrst"), Line("B", "yo")]
    tok = CharTokenizer(bos=False)
    (band,) = banded_examples(lines, tok, "B", rounds=1, cutoff_len=cutoff, band_len=64)
    sample = encode_sample(tok, build_prompt(lines[:1], "B"), "yo", cutoff)
    last = max(i for i, x in enumerate(band["labels"]) if x != IGNORE_INDEX)
    visible = band_allowed(band["window_start"], band["sink"], band["hidden"])[last]
    seen = sorted((i for i, ok in enumerate(visible.tolist()) if ok), key=lambda i: band["position_ids"][i])
    assert [band["input_ids"][i] for i in seen] == sample["input_ids"]
    assert [band["labels"][i] for i in seen] == sample["labels"]
    positions = [band["position_ids"][i] for i in seen]
    assert positions == list(range(positions[0], positions[0] + len(seen)))  # the sample's distances
    assert [x for x in band["labels"] if x != IGNORE_INDEX] == [x for x in sample["labels"] if x != IGNORE_INDEX]


def test_every_reply_is_labeled_once_across_bands():
    lines = [Line("A" if i % 2 else "B", "word " * 3) for i in range(20)]
    bands = banded_examples(lines, CharTokenizer(bos=False), "B", rounds=3, cutoff_len=40, band_len=60)
    assert len(bands) > 1 and all(len(b["input_ids"]) <= 60 for b in bands)
    eos_labels = sum(b["labels"].count(3) for b in bands)
    assert eos_labels == sum(line.speaker == "B" for line in lines) == 10


def test_refuses_a_band_shorter_than_the_cutoff():
    with pytest.raises(BandedError, match="band_len"):
        banded_examples(LINES, CharTokenizer(bos=False), "A", rounds=1, cutoff_len=64, band_len=32)


# ---------------------------------------------------------------- losses on a tiny LLaMA

DIALOGUE = [Line("Viola", "I am not that I play."), Line("Olivia", "Are you a comedian?"),
            Line("Viola", "No, my profound heart."), Line("Olivia", "What are you? What would you?"),
            Line(None, "[Music]"), Line("Viola", "The rudeness that hath appeared in me."),
            Line("Olivia", "Give us the place alone."), Line("Viola", "Most sweet lady.")]


def _model(tokenizer, layers):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama", tokenizer)
    config.num_hidden_layers = layers
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


def _token_losses(model, batch) -> list[float]:
    """Loss of each labeled token, in sequence order (labels shifted as the model's loss does)."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none",
                                               ignore_index=IGNORE_INDEX)
    return losses[labels != IGNORE_INDEX].tolist()


def _per_sample(model, tokenizer, rounds, cutoff) -> list[float]:
    out = []
    for k, line in enumerate(DIALOGUE):
        if line.speaker == "Viola":
            enc = encode_sample(tokenizer, build_prompt(context_window(DIALOGUE, k, rounds), "Viola"), line.text, cutoff)
            out += _token_losses(model, {"input_ids": torch.tensor([enc["input_ids"]]),
                                         "labels": torch.tensor([enc["labels"]])})
    return out


def _banded(model, tokenizer, rounds, cutoff, band_len=512) -> list[float]:
    bands = banded_examples(DIALOGUE, tokenizer, "Viola", rounds, cutoff, band_len)
    return [x for b in bands for x in _token_losses(model, collate_banded([b], 0, torch.float32))]


@pytest.mark.parametrize("flavour", ["gpt2-like", "llama-like"])
@pytest.mark.parametrize("layers,rounds", [(2, 20), (1, 2)])
def test_reply_losses_equal_per_sample_where_the_context_is_the_same(tiny_tokenizers, flavour, layers, rounds):
    """Windows reaching the band's start (rounds 20) or one layer (nothing but
    the embeddings is read from the context): the same losses, token by token."""
    tok = tiny_tokenizers[flavour]
    model = _model(tok, layers)
    reference, banded = _per_sample(model, tok, rounds, 256), _banded(model, tok, rounds, 256)
    assert len(banded) == len(reference) == sum(len(tok(l.text, add_special_tokens=False)["input_ids"]) + 1
                                                for l in DIALOGUE if l.speaker == "Viola")
    assert banded == pytest.approx(reference, abs=1e-5)


def test_cut_windows_and_several_bands_match_per_sample(tiny_tokenizers):
    """cutoff_len cuts most windows mid-line and splits the dialogue into
    bands; on one layer (no BOS: with one, a cut window's BOS sits at its
    line's start, an approximation) the losses still equal per-sample."""
    tok = tiny_tokenizers["gpt2-like"]
    model = _model(tok, 1)
    assert len(banded_examples(DIALOGUE, tok, "Viola", 3, 24, 40)) > 1
    reference = _per_sample(model, tok, 3, 24)
    assert _banded(model, tok, 3, 24, band_len=40) == pytest.approx(reference, abs=1e-5)


def test_shared_context_reads_further_back_with_more_layers(tiny_tokenizers):
    """The documented approximation: 2 layers, 2-line windows.  The first
    reply has no earlier context and matches; later ones differ."""
    tok = tiny_tokenizers["llama-like"]
    model = _model(tok, 2)
    reference, banded = _per_sample(model, tok, 2, 256), _banded(model, tok, 2, 256)
    first = len(tok("I am not that I play.", add_special_tokens=False)["input_ids"]) + 1
    assert banded[:first] == pytest.approx(reference[:first], abs=1e-5)
    assert max(abs(a - b) for a, b in zip(banded, reference)) > 1e-3


def test_lines_from_samples_gives_back_the_dialogue_runs():
    from charlora.samples import build_samples

    from charlora.banded import lines_from_samples

    # Viola's lines, with a stretch of 4 lines without her: with 2 lines of
    # context the samples do not overlap there, so two runs come back.
    lines = DIALOGUE[:3] + [Line("Olivia", f"line {i}") for i in range(4)] + DIALOGUE[5:]
    runs = lines_from_samples(build_samples(lines, "Viola", 2), "Viola")
    as_text = [[(line.speaker, line.text) for line in run] for run in runs]
    assert as_text == [
        [("Viola", "I am not that I play."), (None, "Olivia:Are you a comedian?"), ("Viola", "No, my profound heart.")],
        [(None, "Olivia:line 2"), (None, "Olivia:line 3"), ("Viola", "The rudeness that hath appeared in me."),
         (None, "Olivia:Give us the place alone."), ("Viola", "Most sweet lady.")],
    ]


def test_bands_from_samples_equal_bands_from_the_dialogue(tiny_tokenizers):
    from charlora.samples import build_samples

    from charlora.banded import lines_from_samples

    tok = tiny_tokenizers["gpt2-like"]
    # 3 lines of context: every sample overlaps the one before (with 2, the
    # samples of lines 2 and 5 only touch, and a new run starts: safe, since
    # nothing tells touching from a gap)
    (run,) = lines_from_samples(build_samples(DIALOGUE, "Viola", 3), "Viola")
    assert len(run) == len(DIALOGUE)
    # the narration line and Olivia's come back as their prompt text: the same tokens
    for cutoff, band_len in ((256, 512), (64, 64)):
        assert banded_examples(run, tok, "Viola", 3, cutoff, band_len) == \
            banded_examples(DIALOGUE, tok, "Viola", 3, cutoff, band_len)


def test_lines_from_samples_starts_a_run_at_a_scene_break():
    """--split_scenes samples: the sample after a break has a short context;
    joined to the run before, its band window would reach across the break.
    Every reply's window in its run must be its sample's own context."""
    from charlora.samples import build_samples

    from charlora.banded import lines_from_samples, sample_rounds

    lines = list(DIALOGUE)
    lines[5] = Line("Viola", "The rudeness that hath appeared in me.", after_blank=True)  # a new scene at line 5
    samples = build_samples(lines, "Viola", 2, split_scenes=True)
    assert sample_rounds(samples) == 2
    runs = lines_from_samples(samples, "Viola")
    windows = [[format_line(l) for l in context_window(run, k, 2)]
               for run in runs for k, l in enumerate(run) if l.speaker == "Viola"]
    assert windows == [s["input"].split("\n")[:-1] for s in samples]
    # the second scene's first line has an empty context: it starts a run of its own
    assert [len(run) for run in runs] == [3, 3]


def test_bands_per_step_keeps_the_replies_of_a_per_sample_step():
    from charlora.banded import bands_per_step

    # Falstaff's 143 training samples in 48 bands: 2.98 replies a band, 8 replies a step -> 3 bands
    assert bands_per_step(48, 143, 4, 2) == 3
    assert bands_per_step(10, 10, 4, 2) == 8  # one reply a band: a band per sample
    assert bands_per_step(1, 100, 1, 1) == 1  # never fewer than one band


def test_band_noise_alpha_gives_a_token_its_samples_noise():
    from charlora.banded import band_noise_alpha

    assert band_noise_alpha(5.0, [400, 400], [100, 100]) == 10.0  # 4x longer rows: noise / sqrt(4) unless alpha x 2
    assert band_noise_alpha(0.0, [400], [100]) == 0.0


def test_banded_training_labels_every_training_reply_once(tiny_tokenizers):
    from charlora.samples import build_samples

    from charlora.banded import banded_training

    tok = tiny_tokenizers["llama-like"]
    samples = build_samples(DIALOGUE, "Viola", 2)
    data, args = banded_training(samples, tok, 256, 4, 2, 5.0)
    labeled = [x for row in data["labels"] for x in row if x != IGNORE_INDEX]
    expected = [x for s in samples for x in encode_sample(tok, s["input"], s["output"], 256)["labels"] if x != IGNORE_INDEX]
    assert labeled == expected
    assert args["per_device_train_batch_size"] == 1 and args["remove_unused_columns"] is False
    assert set(data.column_names) == {"input_ids", "labels", "position_ids", "window_start", "sink", "hidden"}


def test_quality_comparison_calls_under_two_standard_errors_no_difference():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("banded_quality",
                                                  Path(__file__).resolve().parents[1] / "bench" / "banded_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # sds 1 and 1 over 3 seeds: standard error sqrt(1/3 + 1/3) = 0.816; a difference of 1 is 1.22 SE
    near = bench.compare([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert near["difference"] == 1.0 and near["standard_error"] == pytest.approx(0.8165, abs=1e-4)
    assert near["verdict"] == "no difference"
    far = bench.compare([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])  # 2 / 0.816 = 2.45 SE
    assert far["verdict"] == "higher" and bench.compare([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])["verdict"] == "lower"
    assert bench.compare([0.5, 0.5], [0.5, 0.5])["verdict"] == "no difference"  # identical, sd 0
    assert bench.compare([float("nan")] * 3, [1.0, 2.0, 3.0])["verdict"] == "not scored"

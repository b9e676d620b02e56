"""Training and evaluation on Parallel Context Windows: a processed sample in
PCW layout (exact values), its equality with encode_sample for one window,
PCW reply loss against pcw_forward, and lora_finetune --pcw_windows end to end
on the tiny LLaMA, whose Trainer loss must be the PCW loss of the same batch."""
from __future__ import annotations

import json

import pytest
import torch

import lora_finetune
from charlora.evaluate import pcw_reply_loss, reply_loss
from charlora.pcw import TASK, PCWError, pcw_forward, pcw_sample, split_windows
from charlora.tokens import IGNORE_INDEX, encode_sample

PROMPT = "Alice:Good morning.\nBob:Hello.\nAlice:How many apples?\nCarol:Ten.\nAlice:Bob?\nBob:"
REPLY = "Two."


def pieces(tokenizer, *texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_pcw_sample_exact_values(tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    ex = pcw_sample(tok, PROMPT, REPLY, cutoff_len=256, windows=2)
    # older lines 0-1 | line 2 (the line start nearest half of the 38 older tokens) | last 2 lines + `Bob:`
    w1, w2, task, reply = pieces(tok, "Alice:Good morning.\nBob:Hello.\n", "Alice:How many apples?\n",
                                 "Carol:Ten.\nAlice:Bob?\nBob:", REPLY)
    assert (len(w1), len(w2), len(task), len(reply)) == (22, 16, 21, 4)
    assert ex["input_ids"] == [tok.bos_token_id] + w1 + w2 + task + reply + [tok.eos_token_id]
    assert ex["input_ids"][:13] == [1, 35, 331, 316, 28, 41, 395, 264, 288, 80, 323, 16, 201]
    assert ex["position_ids"] == list(range(23)) + list(range(1, 17)) + list(range(23, 49))
    assert ex["segments"] == [0] + [1] * 22 + [2] * 16 + [TASK] * 26
    assert ex["labels"] == [IGNORE_INDEX] * 60 + reply + [tok.eos_token_id]
    assert reply + [2] == [54, 89, 81, 16, 2]


def test_pcw_sample_budget(tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    full = pcw_sample(tok, PROMPT, REPLY, cutoff_len=256, windows=2)
    older = full["input_ids"][1:39]
    # cutoff 30: BOS + task 21 + reply 5 leave 3 tokens a window; the newest 6 older tokens are kept
    ex = pcw_sample(tok, PROMPT, REPLY, cutoff_len=30, windows=2)
    assert ex["input_ids"] == [1] + older[-6:] + full["input_ids"][39:]
    assert ex["position_ids"] == [0, 1, 2, 3, 1, 2, 3] + list(range(4, 30))
    assert max(ex["position_ids"]) + 1 == 30
    # window_len caps each window below what cutoff_len would allow
    capped = pcw_sample(tok, PROMPT, REPLY, cutoff_len=256, windows=3, window_len=4)
    assert capped["segments"][:13] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert capped["input_ids"][1:13] == older[-12:]
    # too little room for any window: only the task, cut the way encode_sample cuts a prompt
    tight = pcw_sample(tok, PROMPT, REPLY, cutoff_len=20, windows=2)
    assert tight["input_ids"] == encode_sample(tok, PROMPT, REPLY, 20)["input_ids"]
    assert set(tight["segments"]) == {0, TASK}
    with pytest.raises(PCWError, match="at least 1"):
        pcw_sample(tok, PROMPT, REPLY, 256, windows=0)


@pytest.mark.parametrize("flavour", ["gpt2-like", "llama-like"])
@pytest.mark.parametrize("cutoff", [8, 16, 30, 64, 256])
def test_one_window_is_encode_sample(flavour, cutoff, tiny_tokenizers):
    tok = tiny_tokenizers[flavour]
    for prompt, reply in [(PROMPT, REPLY), ("Bob:", "Hi."), ("Alice:One.\n\nAlice:Two.\nBob:", "A long reply " * 5)]:
        ex = pcw_sample(tok, prompt, reply, cutoff, windows=1)
        ref = encode_sample(tok, prompt, reply, cutoff)
        assert ex["input_ids"] == ref["input_ids"] and ex["labels"] == ref["labels"], (prompt, cutoff)
        assert ex["position_ids"] == list(range(len(ref["input_ids"])))


def test_split_windows_exact_values():
    ids = [1, 2, 3, 4, 5, 6, 7]
    assert split_windows(ids, [0, 0, 1, 1, 1, 2, 2], 3, 3) == [[1, 2], [3, 4, 5], [6, 7]]
    assert split_windows(ids, [0, 0, 0, 1, 1, 2, 2], 2, 7) == [[1, 2, 3], [4, 5, 6, 7]]  # line start nearest 3.5
    assert split_windows(ids, [0, 0, 1, 1, 1, 2, 2], 2, 7) == [[1, 2], [3, 4, 5, 6, 7]]  # a tie: the earlier one
    assert split_windows(ids, [0, 0, 0, 0, 0, 0, 1], 2, 4) == [[1, 2, 3, 4], [5, 6, 7]]  # a line too long: cut in it
    assert split_windows(ids, [0] * 7, 5, 7) == [[1], [2, 3], [4], [5, 6], [7]]
    assert split_windows([], [], 3, 5) == []
    with pytest.raises(PCWError, match="don't fit"):
        split_windows(ids, [0] * 7, 2, 3)


# ------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def llama(models_dir):
    from transformers import AutoModelForCausalLM

    from charlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    return model, load_tokenizer(models_dir / "llama")


def reference_loss(model, tokenizer, samples, windows, recent):
    """Summed reply cross-entropy over pcw_forward's logits, one sample at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ex = pcw_sample(tokenizer, s["input"], s["output"], 256, windows, recent)
            out, _ = pcw_forward(model, ex)
            labels = torch.tensor(ex["labels"][1:])
            total += torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), labels, reduction="sum",
                                                       ignore_index=IGNORE_INDEX).item()
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


def test_pcw_reply_loss(llama, tiny_dataset):
    model, tok = llama
    samples = json.loads(tiny_dataset.read_text())
    plain = reply_loss(model, tok, samples, 256, batch_size=5)
    assert pcw_reply_loss(model, tok, samples, 256, windows=1, recent=0, batch_size=5) == pytest.approx(plain, abs=1e-5)
    pcw = pcw_reply_loss(model, tok, samples, 256, windows=2, recent=0, batch_size=5)
    assert pcw == pytest.approx(reference_loss(model, tok, samples, 2, 0), abs=1e-5)
    assert abs(pcw - plain) > 1e-3  # the windows do change what the reply sees


def tiny_args(models_dir, loras, dataset, *extra):
    # one batch of all 16 samples, no noise or dropout: the first logged loss is the base model's on them all
    return ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(loras), "-d", str(dataset), "-l", "t",
            "-b", "16", "-e", "10", "--grad_accum", "1", "--learning_rate", "1e-2", "--sample_replies", "0",
            "--dtype", "fp32", "-r", "8", "--lora_dropout", "0", "--neftune_noise_alpha", "0", *extra]


@pytest.mark.slow
def test_train_with_pcw_windows(llama, models_dir, tiny_dataset, tmp_path, capsys):
    model, tok = llama
    samples = json.loads(tiny_dataset.read_text())
    rc = lora_finetune.main(tiny_args(models_dir, tmp_path / "loras", tiny_dataset, "--pcw_windows", "2",
                                      "--pcw_recent", "0"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    record = json.loads((tmp_path / "loras" / "t" / "charlora_config.json").read_text())
    assert record["pcw_windows"] == 2 and record["config"]["pcw_recent"] == 0
    losses = record["train_losses"]
    # Trainer + ReplyOnlyHead + collate_pcw computed the PCW loss, not the plain one
    expected = reference_loss(model, tok, samples, 2, 0)
    assert losses[0] == pytest.approx(expected, abs=2e-4)
    assert abs(losses[0] - reply_loss(model, tok, samples, 256)) > 2e-3  # 4e-3 apart: ten times the tolerance
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0], losses  # step 1 runs at warm-up's rate 0


def test_packing_with_pcw_is_one_error(models_dir, tiny_dataset, tmp_path, capsys):
    rc = lora_finetune.main(tiny_args(models_dir, tmp_path / "loras", tiny_dataset, "--pcw_windows", "2", "--packing"))
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: --packing can't be combined with --pcw_windows")
    assert not (tmp_path / "loras").exists()


def test_held_out_scored_in_pcw_layout(models_dir, tiny_dataset, tmp_path, capsys, monkeypatch):
    import charlora.evaluate

    calls = []
    real = charlora.evaluate.pcw_reply_loss
    monkeypatch.setattr(charlora.evaluate, "pcw_reply_loss", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    rc = lora_finetune.main(tiny_args(models_dir, tmp_path / "loras", tiny_dataset, "--pcw_windows", "2",
                                      "--pcw_recent", "0", "--eval_split", "0.25", "--max_steps", "2"))
    _, err = capsys.readouterr()
    assert rc == 0, err
    record = json.loads((tmp_path / "loras" / "t" / "charlora_config.json").read_text())
    assert calls == [2, 2]  # after each of the two one-step epochs, in 2 windows
    assert record["eval_samples"] == 4 and record["eval_loss"] > 0

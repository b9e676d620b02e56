"""Learning the person, not the play: the held-out tail, other speakers'
samples at a lower weight, the data report, and the scores evaluate.py adds."""
import json
import math

import pytest
import torch

from charlora import metrics
from charlora.dialogue import parse_dialogue
from charlora.metrics import LineLoss
from charlora.source import (Source, data_report, held_out_count, load_source, other_samples, rival_lines, source_path,
                             source_record)

DIALOGUE = "(Enter)\nAlice:hi\nBob:yo\nCarol:hey there\nBob:bye now\nAlice:ok\n"


def test_auc_is_the_mann_whitney_share_with_ties_half():
    assert metrics.auc([3, 4], [1, 2]) == 1.0
    assert metrics.auc([1, 2], [3, 4]) == 0.0
    assert metrics.auc([1, 3], [2]) == 0.5
    assert metrics.auc([2], [2]) == 0.5
    assert metrics.auc([2, 5], [2, 1, 0]) == pytest.approx((2.5 + 3) / 6)
    assert math.isnan(metrics.auc([], [1]))


@pytest.mark.parametrize("text, n, expected", [
    ("I am a man, I am a man, and I am a man.", 4, True),
    ("I am a man; I am not a double man.", 4, False),
    ("Ha, ha, ha, ha!", 4, False),                 # three words only... no 4-gram occurs twice
    ("ha ha ha ha ha", 4, True),                   # "ha ha ha ha" at 0 and 1
    ("Is it so? IS IT SO?", 3, True),              # case and punctuation don't matter
])
def test_repeats_ngram(text, n, expected):
    assert metrics.repeats_ngram(text, n) is expected


def test_copies_needs_a_whole_shared_8gram():
    index = metrics.ngram_index(["If sack and sugar be a fault, God help the wicked!"])
    assert metrics.copies("Well: if sack and sugar be a fault, God help the wicked, say I.", index)
    assert not metrics.copies("If sack and sugar be a fault, heaven help us.", index)  # 7 shared words only


def test_mean_loss_gains_and_specificity_exact():
    base = [LineLoss(6.0, 3, 2.0), LineLoss(4.0, 2, None)]  # the second line was cut before its EOS
    tuned = [LineLoss(3.0, 3, 0.5), LineLoss(3.0, 2, None)]
    assert metrics.mean_loss(base) == pytest.approx(12.0 / 6)
    assert metrics.mean_loss(tuned) == pytest.approx(6.5 / 6)
    assert metrics.gains(base, tuned) == [1.0, 0.5]  # per text token, EOS left out
    assert metrics.text_loss(base) == pytest.approx(10.0 / 5)
    assert metrics.eos_loss(base) == 2.0 and metrics.eos_loss(tuned) == 0.5  # per line that has one
    assert math.isnan(metrics.eos_loss([LineLoss(1.0, 1, None)]))
    assert metrics.specificity(4.0, 3.0, 5.0, 4.5) == pytest.approx(0.25 - 0.1)
    assert metrics.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_held_out_count_keeps_both_sides_meaningful():
    assert held_out_count(159, 0.1) == 16
    assert held_out_count(40, 0.1) == 8     # at least MIN_HELD_OUT
    assert held_out_count(31, 0.1) == 0     # 8 out would leave 23 < MIN_TRAIN: no split
    assert held_out_count(159, 0) == 0


def test_other_samples_are_prompted_with_their_own_speaker_and_stop_at_the_tail():
    src = Source("Bob", 2, False, parse_dialogue(DIALOGUE))
    assert src.character_index() == [2, 4]
    assert other_samples(src, end=len(src.lines)) == [
        {"output": "hi", "input": "(Enter)\nAlice:"},
        {"output": "hey there", "input": "Alice:hi\nBob:yo\nCarol:"},
        {"output": "ok", "input": "Carol:hey there\nBob:bye now\nAlice:"},
    ]
    # held out from Bob's second line on: nothing at or after it trains
    assert [s["output"] for s in other_samples(src, end=4)] == ["hi", "hey there"]
    assert [s["output"] for s in other_samples(src, end=6, cap=2)] == ["hi", "hey there"]


def test_rival_lines_are_the_answer_else_the_line_before_and_never_from_the_tail():
    src = Source("Bob", 2, False, parse_dialogue(DIALOGUE))
    assert (src.training_end(1, held_out=True), src.training_end(1, held_out=False)) == (4, 6)
    assert rival_lines(src, 2, end=6) == ["hey there", "ok"]
    assert rival_lines(src, 2, end=4) == ["hey there", "hey there"]  # "ok" is in the held-out tail
    assert rival_lines(src, 1, end=2) == ["hi"]  # no answer before the tail: the line before
    echo = Source("Bob", 2, False, parse_dialogue("Bob:yo\nAlice:yo\n"))
    assert rival_lines(echo, 1, end=2) == [None]  # the same words are no rival
    assert rival_lines(Source("Bob", 2, False, parse_dialogue("Bob:yo\n")), 1, end=1) == [None]


def test_source_file_is_used_only_while_it_matches_the_samples(tmp_path):
    lines = parse_dialogue(DIALOGUE)
    dataset = tmp_path / "bob.json"
    samples = [{"output": "yo", "input": "x"}, {"output": "bye now", "input": "y"}]
    assert source_path(dataset) == tmp_path / "bob.source.json"
    src, why = load_source(dataset, samples)
    assert src is None and "no bob.source.json" in why
    source_path(dataset).write_text(json.dumps(source_record(lines, "Bob", 2, False)))
    src, why = load_source(dataset, samples)
    assert why is None and src.lines == lines and src.name == "Bob"
    src, why = load_source(dataset, samples[:1])  # the dataset was edited
    assert src is None and "no longer matches" in why


def test_data_report_counts_cuts_duplicates_share_and_overlap():
    lines = parse_dialogue(DIALOGUE)
    samples = [{"input": "a", "output": "x"}, {"input": "a", "output": "x"}, {"input": "b", "output": "y"},
               {"input": "c", "output": "x"}]
    rep = data_report(samples, [(10, 5), (10, 5), (300, 10), (20, 290)], 256, 1, Source("Bob", 2, False, lines))
    assert (rep.truncated, rep.max_cut_tokens, rep.mean_cut_tokens) == (2, 54, 54.0)
    assert rep.reply_cut == 1 and rep.duplicates == 1
    assert rep.character_share == pytest.approx(2 / 5)
    assert (rep.held_out, rep.overlap) == (1, 1)
    text = "\n".join(rep.lines(256))
    assert "warning: 1 of 1 held-out replies also appear in training" in text and "raise --cutoff_len" in text


def test_line_losses_add_up_to_reply_loss(models_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charlora.evaluate import line_losses, reply_loss

    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32)
    samples = [{"input": "Alice:Hello.\nBob:", "output": "Good day to you."}, {"input": "Bob:", "output": "Yes."}]
    per_line = line_losses(model, tok, samples, 64, batch_size=2)
    assert [x.text_tokens for x in per_line] == [len(tok(s["output"], add_special_tokens=False)["input_ids"])
                                                for s in samples]
    assert all(x.eos_nll is not None for x in per_line)
    assert metrics.mean_loss(per_line) == pytest.approx(reply_loss(model, tok, samples, 64, batch_size=2), rel=1e-5)


def test_weighted_reply_head_loss_is_the_weighted_token_mean():
    from types import SimpleNamespace

    from charlora.train import ReplyOnlyHead, weighted_items

    head = ReplyOnlyHead.__new__(ReplyOnlyHead)
    head.ignore = -100
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 3, 0]])
    weights = torch.tensor([1.0, 0.25])
    head.arm(labels, weights)
    logits = torch.randn(1, 4, 5)  # the 4 kept positions, as the pre-hook leaves them
    targets = torch.tensor([1, 2, 3, 0])
    ce = torch.nn.functional.cross_entropy(logits[0], targets, reduction="none")
    items = weighted_items([{"labels": labels, "loss_weight": weights}])
    assert float(items) == pytest.approx(2 * 1.0 + 2 * 0.25)
    got = head.loss(SimpleNamespace(logits=logits), labels, items)
    assert float(got) == pytest.approx(float((ce * torch.tensor([1, 1, 0.25, 0.25])).sum() / 2.5), rel=1e-6)


def test_negative_weight_rows_train_unlikelihood():
    from types import SimpleNamespace

    from charlora.train import ReplyOnlyHead, weighted_items

    head = ReplyOnlyHead.__new__(ReplyOnlyHead)
    head.ignore = -100
    labels = torch.tensor([[-100, 1, -100], [-100, 2, 3]])
    weights = torch.tensor([1.0, -0.5])  # the second row: a line the character did not say
    head.arm(labels, weights)
    logits = torch.randn(1, 3, 4)
    p = logits[0].softmax(-1)[torch.arange(3), torch.tensor([1, 2, 3])]
    expected = (-torch.log(p[0]) + 0.5 * -torch.log(1 - p[1]) + 0.5 * -torch.log(1 - p[2])) / 2.0
    items = weighted_items([{"labels": labels, "loss_weight": weights}])
    assert float(items) == 2.0
    assert float(head.loss(SimpleNamespace(logits=logits), labels, items)) == pytest.approx(float(expected), rel=1e-5)


def test_other_samples_under_the_characters_name():
    src = Source("Bob", 2, False, parse_dialogue(DIALOGUE))
    assert other_samples(src, end=4, as_speaker="Bob") == [
        {"output": "hi", "input": "(Enter)\nBob:"},
        {"output": "hey there", "input": "Alice:hi\nBob:yo\nBob:"},
    ]


def test_training_holds_out_the_tail_and_adds_other_speakers(models_dir, tmp_path, apples, capsys):
    import lora_finetune

    data = apples
    assert json.loads(source_path(data).read_text())["lines"][1] == ["Bob", "I have 0 apples for you, Alice.", False]
    capsys.readouterr()
    rc = lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"),
                             "-d", str(data), "-l", "bob", "-e", "1", "--sample_replies", "0", "--dtype", "fp32",
                             "--others_weight", "0.5", "--contrast_weight", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0
    record = json.loads((tmp_path / "loras" / "bob" / "charlora_config.json").read_text())
    # 40 samples: the last 8 held out; Alice's 33 lines before Bob's first held-out line, capped at 32,
    # once under her name and once under his
    assert (record["train_samples"], record["eval_samples"]) == (32 + 32 + 32, 8)
    assert "held out: the last 8 samples" in out
    assert "other speakers: 32 of their lines as extra samples at loss weight 0.5" in out
    assert "data: the character speaks 50.0% of the source's lines" in out


def test_pair_weight_pairs_each_training_line_with_the_answer_and_changes_the_update(models_dir, tmp_path, apples, capsys):
    from conftest import train_apples

    plain = train_apples(models_dir, tmp_path, apples, "plain")
    capsys.readouterr()
    paired = train_apples(models_dir, tmp_path, apples, "paired", "--pair_weight", "1")
    # every one of Bob's 40 lines but the last is answered by Alice's next question; the last by the one before it
    assert "pairs: 40 of the character's lines against what another speaker said there, at weight 1" in capsys.readouterr().out
    assert plain.keys() == paired.keys()
    assert any(not torch.equal(plain[k], paired[k]) for k in plain)


@pytest.mark.parametrize("flag, value", [("--others_weight", "1.5"), ("--others_weight", "nan"),
                                         ("--contrast_weight", "-0.1")])
def test_out_of_range_other_speaker_weights_are_one_line_errors(flag, value, tiny_dataset, capsys):
    import lora_finetune

    assert lora_finetune.main(["-m", "llama", "-d", str(tiny_dataset), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag} is a loss weight relative to the character's lines, in [0, 1], got {float(value)}"]


def test_prepare_dataset_report_and_unknown_report_model(models_dir, tmp_path, capsys, monkeypatch):
    import prepare_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(models_dir)
    (tmp_path / "d.txt").write_text(DIALOGUE)
    assert prepare_dataset.main(["-n", "Bob", "-t", "d.txt", "-j", "b.json", "--report", "llama"]) == 0
    out = capsys.readouterr().out
    assert "data: 2 samples; 0 have their context cut at --cutoff_len 256; 0 duplicates" in out
    assert "data: the character speaks 40.0% of the source's lines" in out
    assert prepare_dataset.main(["-n", "Bob", "-t", "d.txt", "-j", "c.json", "--report", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: model 'nope' not found")
    assert not (tmp_path / "c.json").exists()
    # A models folder elsewhere, as training's --models_dir names it (--report looked only in ./models).
    (tmp_path / "models").unlink()
    assert prepare_dataset.main(["-n", "Bob", "-t", "d.txt", "-j", "e.json", "--report", "llama",
                                 "--models_dir", str(models_dir)]) == 0
    assert "data: the character speaks 40.0% of the source's lines" in capsys.readouterr().out


def test_contrast_rows_leave_the_end_of_sequence_out(tiny_tokenizers):
    from charlora.tokens import encode_sample
    from charlora.train import tokenize_dataset

    tok = tiny_tokenizers["llama-like"]
    samples = [{"input": "Alice:hi\nBob:", "output": "yo"}, {"input": "Alice:hi\nBob:", "output": "hey there"}]
    data = tokenize_dataset(samples, tok, 64, weights=[1.0, -0.3])
    plain = [encode_sample(tok, s["input"], s["output"], 64) for s in samples]
    assert data[0]["labels"] == plain[0]["labels"] and plain[0]["labels"][-1] == tok.eos_token_id
    assert data[1]["labels"] == plain[1]["labels"][:-1] + [-100]
    assert data[1]["loss_weight"] == pytest.approx(-0.3)


def test_a_source_without_other_speakers_trains_on_the_character_alone(models_dir, tmp_path, capsys):
    import lora_finetune
    import prepare_dataset

    (tmp_path / "solo.txt").write_text("".join(f"(He paces, {i})\nBob:I count {i} apples.\n" for i in range(12)))
    data = tmp_path / "solo.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(tmp_path / "solo.txt"), "-j", str(data)]) == 0
    capsys.readouterr()
    rc = lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"),
                             "-d", str(data), "-l", "solo", "-e", "1", "--sample_replies", "0", "--dtype", "fp32",
                             "--others_weight", "0.5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "note: the source has no other speakers' lines; training on the character's lines only" in out
    assert "note: 12 samples are too few to hold out the last lines and still train" in out
    record = json.loads((tmp_path / "loras" / "solo" / "charlora_config.json").read_text())
    assert (record["train_samples"], record["eval_samples"]) == (12, 0)


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "--seed must be in [0, 4.29497e+09], got -1"),
    ({"epochs": 1e308}, "--epochs must be in [0, 100000], got 1e+308"),
    ({"cutoff_len": 10**9}, "--cutoff_len must be in [8, 1e+06], got 1000000000"),
    ({"lora_alpha": float("inf")}, "--lora_alpha must be in (0, 1e+06], got inf"),
    ({"max_steps": -5}, "--max_steps must be in [-1, 1e+09], got -5"),
    ({"lora_layers": -1}, "--lora_layers must be in [0, 65536], got -1"),
    # refused after the model had loaded
    ({"lora_layers": 3, "target_modules": "default"}, "--lora_layers needs --target_modules 'all-linear' or a list of module names"),
])
def test_training_flags_out_of_range_are_refused_before_anything_loads(changes, message):
    from charlora.errors import CharloraError
    from charlora.train import TrainConfig, check_train_config

    with pytest.raises(CharloraError) as err:
        check_train_config(TrainConfig(**changes))
    assert str(err.value) == message


def test_every_refused_pair_is_one_line_naming_both_flags_either_way_round():
    from charlora.errors import CharloraError
    from charlora.train import TrainConfig, check_train_config
    from charlora.train_config import INCOMPATIBLE

    on = {"packing": True, "banded": True, "frozen_context": True, "pcw_windows": 2, "others_weight": 0.3,
          "contrast_weight": 0.3, "pair_weight": 1.0, "preserve_weight": 0.5}
    for flag, others, _ in INCOMPATIBLE:
        for other in others:
            with pytest.raises(CharloraError) as err:
                check_train_config(TrainConfig(**{flag: on[flag], other: on[other]}))
            text = str(err.value)
            assert f"--{flag} " in text and f"--{other}:" in text and "\n" not in text
    for flag in on:  # each alone is fine
        check_train_config(TrainConfig(**{flag: on[flag]}))


def test_the_help_lists_exactly_the_flags_a_flag_is_refused_with():
    import lora_finetune
    from charlora.train_config import incompatible_with

    assert incompatible_with("banded") == ["others_weight", "contrast_weight", "pair_weight", "preserve_weight",
                                           "packing", "pcw_windows", "frozen_context"]
    assert incompatible_with("packing") == ["others_weight", "contrast_weight", "pair_weight", "preserve_weight",
                                            "pcw_windows", "banded", "frozen_context"]
    assert incompatible_with("pcw_recent") == []
    helps = {a.dest: a.help for a in lora_finetune.make_parser()._actions}
    assert helps["banded"].endswith("(not with --others_weight, --contrast_weight, --pair_weight, --preserve_weight, "
                                    "--packing, --pcw_windows, --frozen_context)")
    assert helps["frozen_context"].endswith("(not with --pair_weight, --preserve_weight, --packing, --pcw_windows, "
                                            "--banded)")


def test_retrain_length_is_the_kept_epoch_when_the_schedule_was_cut_short():
    from charlora.train import retrain_length

    history = [(18, 3.98), (36, 3.94), (54, 4.05)]
    assert retrain_length(history, 36, epochs=10) == 2
    assert retrain_length(history, 54, epochs=3) is None  # the last planned epoch: its rate had decayed
    assert retrain_length(history, 18, epochs=3) == 1
    assert retrain_length([], 0, epochs=10) is None


def test_retraining_pass_equals_a_direct_run_of_the_kept_length(models_dir, tmp_path, apples, capsys, monkeypatch):
    import lora_finetune
    from safetensors.torch import load_file

    from charlora import train as train_module

    common = ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"), "-d", str(apples),
              "--sample_replies", "0", "--dtype", "fp32", "--seed", "7"]
    assert lora_finetune.main(common + ["-l", "direct", "-e", "1"]) == 0
    # whatever epoch the tiny model keeps, make the second pass run for 1 epoch
    monkeypatch.setattr(train_module, "retrain_length", lambda history, step, epochs: 1)
    capsys.readouterr()
    assert lora_finetune.main(common + ["-l", "twice", "-e", "2", "--early_stop", "0", "--retrain"]) == 0
    assert "retraining from the start for the 1 epoch kept, the learning rate decaying to 0 over them" in capsys.readouterr().out
    direct, twice = (load_file(tmp_path / "loras" / n / "adapter_model.safetensors") for n in ("direct", "twice"))
    assert direct.keys() == twice.keys() and all(torch.equal(direct[k], twice[k]) for k in direct)
    record = json.loads((tmp_path / "loras" / "twice" / "charlora_config.json").read_text())
    assert record["retrained_epochs"] == 1 and record["config"]["epochs"] == 2
    assert len(record["first_pass"]["eval_losses"]) == 2 and len(record["eval_losses"]) == 1


@pytest.mark.parametrize("value", ["-1", "nan", "1000"])
def test_out_of_range_pair_weight_is_a_one_line_error(value, tiny_dataset, capsys):
    import lora_finetune

    assert lora_finetune.main(["-m", "llama", "-d", str(tiny_dataset), "--pair_weight", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --pair_weight must be ") and err[0].endswith(f"got {float(value)}")


def test_seed_scores_and_summary_are_per_adapter_and_leave_unmeasured_scores_out():
    from charlora.evaluate import seed_scores

    base = {"character_loss": 4.0, "others_loss": 5.0, "generated": 40}
    tuned = [{"character_loss": 3.6, "others_loss": 4.5, "generated": 40, "clean_ends": 38, "repeated": 2,
              "copied": None, "specificity": 0.0, "text_specificity": 0.01, "attribution_auc": 0.6},
             {"character_loss": 3.2, "others_loss": 4.5, "generated": 40, "clean_ends": 40, "repeated": 0,
              "copied": 0, "specificity": 0.1, "text_specificity": None, "attribution_auc": 0.7}]
    scores = seed_scores(base, tuned)
    assert scores["character_loss_change"] == pytest.approx([-0.1, -0.2])
    assert scores["others_loss_change"] == pytest.approx([-0.1, -0.1])
    assert scores["clean_ends"] == [0.95, 1.0] and scores["repeated_4gram"] == [0.05, 0.0]
    assert math.isnan(scores["copied_8gram"][0]) and scores["copied_8gram"][1] == 0.0
    assert metrics.mean_sd(scores["text_specificity"]) == (0.01, 0.0)  # the unmeasured seed is left out

"""--preserve_weight: other speakers' lines kept at the base model's predictions (KL to the base)."""
import copy
import json
import math

import pytest
import torch


def test_kl_to_base_exact():
    from charlora.objective import kl_to_base

    base = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    adapter = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); identical distributions: 0
    assert kl_to_base(adapter, base).tolist() == pytest.approx([0.5 * math.log(4 / 3), 0.0], abs=1e-7)
    # logits need not be normalized: only the adapter's distribution counts
    assert kl_to_base(adapter + 3.0, base).tolist() == pytest.approx([0.5 * math.log(4 / 3), 0.0], abs=1e-6)


def test_reply_head_takes_kl_on_preserve_rows_and_cross_entropy_elsewhere():
    from types import SimpleNamespace

    from charlora.objective import ReplyOnlyHead, kl_to_base, weighted_items

    head = ReplyOnlyHead.__new__(ReplyOnlyHead)
    head.ignore, head.pairs = -100, None
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 3, 0]])
    weights = torch.tensor([1.0, 0.5])
    preserve = torch.tensor([0, 1])  # the second row: another speaker's line
    head.arm(labels, weights, None, preserve)
    assert head.preserve.tolist() == [False, False, True, True]
    logits = torch.randn(1, 4, 5)
    head.base_logp = torch.log_softmax(torch.randn(2, 5), -1)
    ce = torch.nn.functional.cross_entropy(logits[0, :2], torch.tensor([1, 2]), reduction="none")
    kl = kl_to_base(logits[0, 2:], head.base_logp)
    items = weighted_items([{"labels": labels, "loss_weight": weights}])
    expected = (ce.sum() + 0.5 * kl.sum()) / (2 + 2 * 0.5)
    assert float(head.loss(SimpleNamespace(logits=logits), labels, items)) == pytest.approx(float(expected), rel=1e-6)
    assert head.preserve is None and head.base_logp is None  # used once, for its own batch


def test_base_log_probs_are_the_plain_base_in_eval_mode(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from charlora.objective import ReplyOnlyHead

    base = copy.deepcopy(tiny_llama)
    model = get_peft_model(copy.deepcopy(tiny_llama), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    head = ReplyOnlyHead(model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, 8, 7, -100, -100]])
    inputs = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), "labels": labels}
    head.arm(labels, torch.tensor([1.0, 1.0]), None, torch.tensor([0, 1]))
    head.base_log_probs(model, inputs, torch.tensor([0, 1]))
    assert model.training  # put back as it was
    assert head.keep.tolist() == (labels[:, 1:] != -100).tolist()  # the full batch's selection again
    head.keep = None
    with torch.no_grad():
        want = torch.log_softmax(base(input_ids=ids[1:], attention_mask=inputs["attention_mask"][1:]).logits[0, :2].float(), -1)
        tuned = torch.log_softmax(model(input_ids=ids[1:]).logits[0, :2].float(), -1)
    # the second row keeps positions 0 and 1 (labels at 1 and 2): the base's, not the (perturbed) adapter's
    assert head.base_logp.shape == (2, want.shape[-1])
    torch.testing.assert_close(head.base_logp, want, rtol=0, atol=1e-5)
    assert not torch.allclose(tuned, want, atol=1e-3)


def test_training_with_preserve_rows_logs_them_and_changes_the_update(models_dir, tmp_path, apples, capsys):
    from conftest import train_apples

    plain = train_apples(models_dir, tmp_path, apples, "plain", steps=3)
    capsys.readouterr()
    kept = train_apples(models_dir, tmp_path, apples, "kept", "--preserve_weight", "1", steps=3)
    assert "preserve: 40 other speakers' lines kept at the base model's predictions, at weight 1" in capsys.readouterr().out
    record = json.loads((tmp_path / "loras" / "kept" / "charlora_config.json").read_text())
    assert record["train_samples"] == 80
    # the same 80 rows, the other speakers' ones under cross-entropy instead of KL: another update
    learnt = train_apples(models_dir, tmp_path, apples, "learnt", "--others_weight", "1", steps=3)
    assert any(not torch.equal(plain[k], kept[k]) for k in plain)
    assert any(not torch.equal(learnt[k], kept[k]) for k in plain)


@pytest.mark.parametrize("extra", [["--preserve_weight", "2"], ["--preserve_weight", "0.5", "--others_weight", "0.5"]])
def test_bad_preserve_weight_is_a_one_line_error(extra, tiny_dataset, capsys):
    import lora_finetune

    assert lora_finetune.main(["-m", "llama", "-d", str(tiny_dataset)] + extra) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --preserve_weight")

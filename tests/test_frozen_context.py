"""--frozen_context: the context forward only into a cache, the reply trained through: the same loss."""
import pytest
import torch

from conftest import FAMILY_TOKENIZER, tiny_config


def test_split_at_replies_cuts_every_row_at_the_earliest_reply():
    from charlora.frozen_context import context_cut, split_at_replies

    ids = torch.tensor([[11, 12, 13, 14, 15, 0], [21, 22, 23, 24, 0, 0], [31, 32, 33, 34, 35, 36]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, -100, 15, -100], [-100, -100, -100, 24, -100, -100],
                           [-100, -100, -100, -100, -100, -100]])  # the last row: nothing labelled
    # first labels at 4 and 3 (none in row 3): the token at 2 predicts the earliest reply
    assert context_cut(labels) == 2
    assert context_cut(torch.full((2, 3), -100)) == 0
    assert context_cut(torch.tensor([[5, 6, -100]])) == 0  # a label at 0: nothing before it
    p = split_at_replies(ids, mask, labels)
    assert p["context_ids"].tolist() == [[11, 12], [21, 22], [31, 32]]
    assert p["context_mask"].tolist() == [[1, 1], [1, 1], [1, 1]]
    assert p["context_positions"].tolist() == [[0, 1]] * 3
    assert p["ids"].tolist() == [[13, 14, 15, 0], [23, 24, 0, 0], [33, 34, 35, 36]]
    assert p["mask"].tolist() == mask.tolist()
    assert p["positions"].tolist() == [[2, 3, 4, 5]] * 3
    assert p["labels"].tolist() == [[-100, -100, 15, -100], [-100, 24, -100, -100], [-100] * 4]


def lora_model(family, tiny_tokenizers):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tiny_tokenizers[FAMILY_TOKENIZER[family]]),
                                             dtype=torch.float32)
    model.config.use_cache = False  # as training sets it
    # eval mode: gpt2 and opt configs carry dropout 0.1, which would make any two passes differ
    return get_peft_model(model.eval(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 0, 0, 0], [20, 21, 22, 23, 24, 25, 26, 0]])
    mask = (torch.arange(8)[None, :] < torch.tensor([[8], [5], [7]])).long()
    labels = torch.full_like(ids, -100)
    labels[0, 5:8], labels[1, 3:5], labels[2, 6:7] = ids[0, 5:8], ids[1, 3:5], ids[2, 6:7]  # cut at column 2
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def losses_and_grads(model, inputs, frozen: bool):
    from charlora import frozen_context as fc
    from charlora.objective import ReplyOnlyHead

    head = ReplyOnlyHead(model)
    model.zero_grad()
    if frozen:
        parts = fc.split_at_replies(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        cache = fc.cache_context(model, parts, inputs["input_ids"].shape[1])
        head.arm(parts["labels"])
        loss = head.loss(fc.trained_pass(model, parts, cache, inputs["input_ids"].shape[1]), parts["labels"])
    else:
        head.arm(inputs["labels"])
        loss = head.loss(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]), inputs["labels"])
    loss.backward()
    head.handle.remove()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", list(FAMILY_TOKENIZER))
def test_the_loss_is_the_unsplit_steps_and_context_gradients_are_left_out(family, tiny_tokenizers):
    model = lora_model(family, tiny_tokenizers)
    inputs = batch()
    full_loss, full_grads = losses_and_grads(model, inputs, frozen=False)
    loss, grads = losses_and_grads(model, inputs, frozen=True)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    # the gradient leaves out the context's path: it differs, but stays finite and reaches every LoRA weight
    assert any(not torch.allclose(grads[n], full_grads[n], atol=1e-7) for n in grads)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


def test_with_no_context_the_gradient_is_the_unsplit_steps(tiny_tokenizers):
    model = lora_model("llama", tiny_tokenizers)
    inputs = batch()
    inputs["labels"] = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    inputs["labels"][:, 0] = -100  # every token after the first labelled: nothing is context
    full_loss, full_grads = losses_and_grads(model, inputs, frozen=False)
    loss, grads = losses_and_grads(model, inputs, frozen=True)
    assert loss == pytest.approx(full_loss, rel=1e-6)
    for n in grads:
        torch.testing.assert_close(grads[n], full_grads[n], rtol=1e-4, atol=1e-7)


def test_neftune_noise_per_token_is_the_unsplit_steps(tiny_tokenizers):
    from charlora.frozen_context import neftune_length

    model = lora_model("llama", tiny_tokenizers)
    model.get_input_embeddings().neftune_noise_alpha = 5.0
    with neftune_length(model, 4, 16):  # a quarter of the sequence: alpha / sqrt(4/16 L d) = (alpha/2) / sqrt(L/4 d)
        assert model.get_input_embeddings().neftune_noise_alpha == 2.5
    assert model.get_input_embeddings().neftune_noise_alpha == 5.0


def test_training_with_frozen_context_starts_from_the_same_loss(models_dir, tmp_path, apples, capsys):
    import json

    from conftest import train_apples

    flags = ("--neftune_noise_alpha", "0")
    plain = train_apples(models_dir, tmp_path, apples, "plain", *flags, steps=2)
    frozen = train_apples(models_dir, tmp_path, apples, "frozen", "--frozen_context", *flags, steps=2)
    first = [json.loads((tmp_path / "loras" / n / "charlora_config.json").read_text())["train_losses"][0]
             for n in ("plain", "frozen")]
    assert first[1] == pytest.approx(first[0], rel=1e-4)
    assert any(not torch.equal(plain[k], frozen[k]) for k in plain)


@pytest.mark.parametrize("extra", [["--packing"], ["--banded"], ["--preserve_weight", "0.5"]])
def test_frozen_context_with_a_layout_of_its_own_is_a_one_line_error(extra, tiny_dataset, capsys):
    import lora_finetune

    assert lora_finetune.main(["-m", "llama", "-d", str(tiny_dataset), "--frozen_context"] + extra) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--frozen_context" in err[0]

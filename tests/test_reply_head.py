"""The reply-only output projection gives the same loss and gradients as the
model's own full-vocabulary loss, on every family."""
import pytest
import torch

from charlora.tokens import encode_sample
from charlora.train import ReplyOnlyHead
from conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_same_loss_and_grads_as_full_logits(family, models_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    tok = AutoTokenizer.from_pretrained(models_dir / family)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    feats = [encode_sample(tok, "Alice:Good morning.\nBob:", "Hi there, Alice.", 64),
             encode_sample(tok, "Bob:", "Fine.", 64)]
    batch = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")(feats)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(models_dir / family, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))

    def grads():
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full = model(**batch).loss
    full.backward()
    g_full = grads()
    model.zero_grad()

    head = ReplyOnlyHead(model)
    head.arm(batch["labels"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    n_reply = int((batch["labels"][:, 1:] != -100).sum())
    assert out.logits.shape[:2] == (1, n_reply)  # only reply positions were projected
    loss = head.loss(out, batch["labels"])
    loss.backward()
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    for name, g in grads().items():
        torch.testing.assert_close(g, g_full[name], rtol=1e-4, atol=1e-6, msg=name)

    # disarmed (generation, evaluation): the head is untouched
    assert head.keep is None
    assert model(input_ids=batch["input_ids"]).logits.shape[:2] == batch["input_ids"].shape
    head.handle.remove()

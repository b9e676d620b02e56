"""Shared fixtures: tiny tokenizers and tiny models built in-process (no hub).

Everything here is deterministic and fast: a byte-level BPE of ~400 tokens is
trained on the first few hundred lines of data/twelfth-night.txt (< 1 s), and
each model family is a 2-layer, 48-wide model built from its config with a
fixed seed, saved with save_pretrained into `<tmp>/models/<family>` so that
lora_finetune.main finds it by folder name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

# The property tests draw the same examples on every run unless asked to explore
# (HYPOTHESIS_PROFILE=explore): two CI runs failed on a draw the test's own
# expectation had missed (lr 1.0; -c 513 on a 512-position model), and a change
# must land or fail for its code, not for the dice.  Explore locally, with
# CHARLORA_SWEEP_EXAMPLES raised, before changing what a sweep expects.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_TEXT = REPO / "data" / "twelfth-night.txt"
TOKENIZER_LINES = 300
VOCAB_SIZE = 400

# The model families the product must support (models.py: "GPT-J/Pygmalion,
# GPT-NeoX/Pythia, OPT, LLaMA-family and GPT-2 all take the same path") and the
# tokenizer flavour each one ships with in the wild.
FAMILY_TOKENIZER = {
    "gpt2": "gpt2-like",
    "gptj": "gpt2-like",
    "gpt_neox": "gpt2-like",
    "opt": "gpt2-like",
    "llama": "llama-like",
}
FAMILIES = list(FAMILY_TOKENIZER)

# Every linear layer but the output head, as PEFT's "all-linear" names them in
# adapter_config.json's target_modules, per family.
ALL_LINEAR_TARGETS = {
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "gptj": {"q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"},
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}
# Names that exist only in the MLP block of each family (not in attention).
MLP_ONLY_MODULES = {
    "gpt2": {"c_fc"},
    "gptj": {"fc_in", "fc_out"},
    "gpt_neox": {"dense_h_to_4h", "dense_4h_to_h"},
    "opt": {"fc1", "fc2"},
    "llama": {"gate_proj", "up_proj", "down_proj"},
}

HIDDEN = 48
HEADS = 4
LAYERS = 2
MAX_POSITIONS = 512
MODEL_SEED = 1234
# Wider than the usual 0.02: with a frozen, tied 48-wide head and a final layer
# norm, logits from 0.02-scale embeddings span only about +-1, so no adapter
# could push the loss far below ln(vocab).  At 0.2 a LoRA run of 24 steps takes
# the loss from ~6.5 to 10-36 % of it on every family.
INIT_RANGE = 0.2


def pytest_configure(config):
    """One intra-op thread: these models are tiny, and with 2 threads on a
    2-core machine that is also running something else, PyTorch's spinning
    workers made a 24-step run take 45 s instead of under 1 s."""
    import torch

    torch.set_num_threads(1)


def _training_lines() -> list[str]:
    lines = [l.strip() for l in TOKENIZER_TEXT.read_text(encoding="utf-8").splitlines() if l.strip()]
    return lines[:TOKENIZER_LINES]


def build_tiny_tokenizer(flavour: str):
    """A PreTrainedTokenizerFast with a freshly trained byte-level BPE.

    gpt2-like: eos "<|endoftext|>", no pad, no BOS added.
    llama-like: bos "<s>" prepended to every encoding, eos "</s>", no pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if flavour == "gpt2-like":
        specials = ["<|endoftext|>"]
    elif flavour == "llama-like":
        specials = ["<unk>", "<s>", "</s>"]
    else:
        raise ValueError(f"unknown tokenizer flavour {flavour!r}")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)

    if flavour == "gpt2-like":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>")
    else:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert fast.pad_token is None
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizers() -> dict:
    """{"gpt2-like": tokenizer, "llama-like": tokenizer}, built once per session."""
    return {flavour: build_tiny_tokenizer(flavour) for flavour in ("gpt2-like", "llama-like")}


def tiny_config(family: str, tokenizer):
    """A 2-layer config of `family` sized to the tokenizer."""
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig, OPTConfig

    vocab = len(tokenizer)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    common = {"vocab_size": vocab, "eos_token_id": eos, "bos_token_id": bos}
    if family == "opt":
        common["init_std"] = INIT_RANGE
    else:
        common["initializer_range"] = INIT_RANGE
    if family == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POSITIONS, **common)
    if family == "gptj":
        return GPTJConfig(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POSITIONS, rotary_dim=8, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                             intermediate_size=4 * HIDDEN, max_position_embeddings=MAX_POSITIONS, rotary_pct=0.25,
                             **common)
    if family == "opt":
        return OPTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=4 * HIDDEN,
                         word_embed_proj_dim=HIDDEN, max_position_embeddings=MAX_POSITIONS,
                         pad_token_id=eos, **common)
    if family == "llama":
        return LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           num_key_value_heads=2, intermediate_size=2 * HIDDEN,
                           max_position_embeddings=MAX_POSITIONS, **common)
    raise ValueError(f"unknown family {family!r}")


def save_tiny_model(family: str, tokenizer, dir: Path) -> Path:
    """Build a seeded tiny `family` model and save it with the tokenizer into `dir`/family.

    `dir` is the models folder; returns the model folder.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(MODEL_SEED)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tokenizer), dtype=torch.float32)
    out = Path(dir) / family
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    assert (out / "config.json").is_file()
    return out


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny_tokenizers) -> Path:
    """`<tmp>/models` holding one tiny model per family (built once per session)."""
    root = tmp_path_factory.mktemp("charlora") / "models"
    root.mkdir()
    for family in FAMILIES:
        save_tiny_model(family, tiny_tokenizers[FAMILY_TOKENIZER[family]], root)
    return root


# A short dialogue: Bob answers in a few fixed shapes so a tiny model can learn
# his replies within ~25 optimizer steps.
TINY_DIALOGUE = "\n".join(
    line
    for i in range(16)
    for line in (
        f"Alice:Good morning, Bob. How many apples today?",
        f"Bob:I have {['one', 'two', 'three', 'four'][i % 4]} apples for you, Alice.",
    )
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A processed dataset JSON (16 samples of {"output", "input"}) built by charlora itself."""
    from charlora.dialogue import parse_dialogue
    from charlora.samples import build_samples

    samples = build_samples(parse_dialogue(TINY_DIALOGUE), "Bob", rounds=2)
    assert len(samples) == 16
    assert samples[1] == {
        "output": "I have two apples for you, Alice.",
        "input": "Bob:I have one apples for you, Alice.\nAlice:Good morning, Bob. How many apples today?\nBob:",
    }
    path = tmp_path_factory.mktemp("data") / "processed_dataset.json"
    path.write_text(json.dumps(samples, indent=2), encoding="utf-8")
    return path


# ------------------------------------------------------------------ chat

# A conversation with narration and a third speaker, for prompts and windows.
HISTORY_TEXT = ("Alice:Hi.\nBob:Hello, Alice.\n(Enter Carol)\nCarol:What news?\nAlice:How many apples?\n"
                "Bob:Two.\nAlice:Only two?")


def chat_history():
    from charlora.dialogue import parse_dialogue

    return parse_dialogue(HISTORY_TEXT)


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizers):
    """A seeded tiny llama (not saved), for chat sessions built in-process."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama", tiny_tokenizers["llama-like"])).eval()


def chat_session(model, tokenizer, **settings):
    """A ChatSession as Bob talking to Alice, with chat_history() said so far."""
    from charlora.chat import ChatSession, Settings

    session = ChatSession(model, tokenizer, Settings("Bob", "Alice", **settings))
    session.history = chat_history()
    return session


@pytest.fixture(scope="session")
def chat_models(tmp_path_factory, tiny_tokenizers, tiny_dataset):
    """(models, loras, samples): models/{llama, llama_wide} and loras/t, an adapter
    trained for 24 steps on llama, with the replies training printed at its end
    [(prompt, reply, ended by EOS)]."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from charlora.train import TrainConfig, train

    root = tmp_path_factory.mktemp("chat")
    models, loras = root / "models", root / "loras"
    tok = tiny_tokenizers["llama-like"]
    save_tiny_model("llama", tok, models)
    # The same architecture at another size: hidden 64 instead of 48.
    wide = LlamaConfig(**{**tiny_config("llama", tok).to_dict(), "hidden_size": 64, "head_dim": 16})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(wide).save_pretrained(models / "llama_wide")
    tok.save_pretrained(models / "llama_wide")
    cfg = TrainConfig(model_name="llama", models_dir=str(models), loras_dir=str(loras), dataset_name=str(tiny_dataset),
                      lora_name="t", batch_size=4, epochs=6, grad_accum=1, learning_rate=1e-2, sample_replies=2,
                      dtype="fp32", lora_rank=8,
                      # the reply asserted in test_chat must be learned exactly; embedding
                      # noise sized for real models swamps a 48-wide one
                      neftune_noise_alpha=0)
    result = train(cfg, log=lambda *a, **k: None)
    return models, loras, result.samples


@pytest.fixture
def apples(tmp_path):
    """A processed dataset (and its source file) of 40 exchanges, Bob answering Alice."""
    import prepare_dataset

    dialogue = tmp_path / "apples.txt"
    dialogue.write_text("\n".join(f"Alice:How many apples, Bob? Day {i}.\nBob:I have {i} apples for you, Alice."
                                  for i in range(40)) + "\n")
    data = tmp_path / "bob.json"
    assert prepare_dataset.main(["-n", "Bob", "-r", "2", "-t", str(dialogue), "-j", str(data)]) == 0
    return data


def train_apples(models_dir, tmp_path, data, name: str, *flags: str, steps: int = 2) -> dict:
    """Train the tiny llama on `data` for `steps` steps (no held-out slice) and return the adapter's tensors."""
    import lora_finetune
    from safetensors.torch import load_file

    assert lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"),
                               "-d", str(data), "--max_steps", str(steps), "--sample_replies", "0", "--dtype", "fp32",
                               "--eval_split", "0", "-l", name, *flags]) == 0
    return load_file(tmp_path / "loras" / name / "adapter_model.safetensors")

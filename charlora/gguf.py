"""After training: the adapter as a llama.cpp LoRA GGUF.

llama.cpp (llama-cli / llama-server `--lora FILE.gguf`, and apps built on it)
reads a LoRA as a GGUF file of type `adapter`: for every adapted base tensor
`<gguf name>.lora_a` (r x in) and `<gguf name>.lora_b` (out x r), and
`adapter.lora.alpha`, applied as W + alpha/r * B @ A.  This writes that file
with the `gguf` package (the writer llama.cpp's own converters use), so no
llama.cpp checkout, hub access or base weights are needed: only the base
model's config.json.

Only LLaMA-architecture bases (LLaMA, SmolLM, Mistral: the default model's
family) are handled.  llama.cpp stores their q/k projections with the rows of
each head permuted for its RoPE kernel, so lora_b of q_proj and k_proj gets
the same row permutation as llama.cpp's convert_hf_to_gguf.py applies to the
base weights; other families need that converter's per-architecture rules.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from charlora.errors import CharloraError
from charlora.files import check_outputs, output_target

# HF architecture -> llama.cpp architecture, for the families handled here.
LLAMA_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
OUT_TYPES = ("f32", "f16")

_PEFT_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight")


def permute_rows(weight, n_head: int):
    """llama.cpp's q/k row order: within each head, HF's rotate-half pairs
    (i, i + d/2) become neighbours (2i, 2i+1).  Same as LlamaModel.permute in
    llama.cpp's convert_hf_to_gguf.py; works on numpy arrays and tensors."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def lora_scale_alpha(adapter_config: Mapping[str, Any]) -> float:
    """The alpha that gives llama.cpp's alpha/r the scale PEFT applies
    (rsLoRA scales by alpha/sqrt(r))."""
    alpha, r = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def check_base(base_config: Mapping[str, Any]) -> str:
    """llama.cpp's architecture name for a base handled here, or an error
    (run before training, so --export_gguf never fails after hours)."""
    architecture = (base_config.get("architectures") or ["?"])[0]
    if architecture not in LLAMA_ARCHITECTURES:
        raise CharloraError(f"GGUF export handles LLaMA-architecture bases ({', '.join(LLAMA_ARCHITECTURES)}); "
                            f"this base is {architecture}: use llama.cpp's convert_lora_to_gguf.py --base <model folder>")
    return LLAMA_ARCHITECTURES[architecture]


def config_count(base_config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """A positive whole number from the base's config.json (a text or missing
    `num_hidden_layers` was a ValueError / KeyError traceback, 0 heads a
    ZeroDivisionError), or an error naming the key."""
    value = base_config.get(key, default)
    if type(value) is not int or value < 1:
        raise CharloraError(f"the base model's config.json needs a whole \"{key}\" of 1 or more, got {value!r}")
    return value


def module_shape(module: str, base_config: Mapping[str, Any]) -> tuple[int, int] | None:
    """(out, in) features of a LLaMA linear layer named `module`, from the
    base's config.json; None for another layer or a config without the sizes."""
    try:
        hidden, n_head = int(base_config["hidden_size"]), int(base_config["num_attention_heads"])
        n_kv = int(base_config.get("num_key_value_heads") or n_head)
        head_dim = int(base_config.get("head_dim") or hidden // n_head)
        inter = int(base_config["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return None
    shapes = {"q_proj": (n_head * head_dim, hidden), "k_proj": (n_kv * head_dim, hidden),
              "v_proj": (n_kv * head_dim, hidden), "o_proj": (hidden, n_head * head_dim),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    return shapes.get(module.rsplit(".", 1)[-1])


def gguf_lora_tensors(state: Mapping[str, Any], base_config: Mapping[str, Any]) -> dict[str, Any]:
    """PEFT adapter weights -> {llama.cpp tensor name: float32 numpy array}.

    `state` maps PEFT keys (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`)
    to tensors; the result holds `blk.0.attn_q.weight.lora_a` (r x in) and
    `.lora_b` (out x r) for each adapted layer, q/k lora_b rows permuted.
    """
    import gguf
    import numpy as np

    check_base(base_config)
    n_head = config_count(base_config, "num_attention_heads")
    n_kv = config_count(base_config, "num_key_value_heads", n_head) if base_config.get("num_key_value_heads") else n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config_count(base_config, "num_hidden_layers"))
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None:
            raise CharloraError(f"the adapter holds {key}, which is not a LoRA A/B weight (trained embeddings or "
                                "modules_to_save can't go into a llama.cpp LoRA)")
        module, ab = m.group("module"), m.group("ab")
        # A damaged weight (1-D, NaN) used to export with exit 0 and fail, or
        # talk noise, only once llama.cpp loaded it.
        if tensor.ndim != 2:
            raise CharloraError(f"the adapter's {key} has shape {list(tensor.shape)}; a LoRA weight is a matrix")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise CharloraError(f"llama.cpp has no tensor for the adapted layer {module}")
        # An adapter trained on another size of model exported without a
        # word and failed only when llama.cpp loaded it.
        shape = module_shape(module, base_config)
        if shape is not None and tensor.ndim == 2:
            want, got = (shape[1], tensor.shape[1]) if ab == "A" else (shape[0], tensor.shape[0])
            if want != got:
                raise CharloraError(f"the adapter does not fit this base model: its {module} is for {got} "
                                    f"{'inputs' if ab == 'A' else 'outputs'}, the base's has {want} (was it trained "
                                    "on another model?)")
        array = tensor.detach().float().cpu().numpy()
        if not np.isfinite(array).all():
            raise CharloraError(f"the adapter's {key} holds NaN or infinite values: the adapter is damaged")
        if ab == "B" and module.endswith(("q_proj", "k_proj")):
            array = permute_rows(array, n_head if module.endswith("q_proj") else n_kv)
        out[f"{target}.lora_{ab.lower()}"] = np.ascontiguousarray(array)
    if not out:
        raise CharloraError("the adapter holds no LoRA weights")
    for base in sorted({k.rsplit(".", 1)[0] for k in out}):
        if f"{base}.lora_a" not in out or f"{base}.lora_b" not in out:
            raise CharloraError(f"the adapter's LoRA weights are incomplete: {base} lacks lora_A or lora_B")
        rank_a, rank_b = out[f"{base}.lora_a"].shape[0], out[f"{base}.lora_b"].shape[1]
        if rank_a != rank_b:  # llama.cpp can't multiply them; it refused the file only when loading it
            raise CharloraError(f"the adapter's LoRA weights do not fit together: {base} has lora_A of rank {rank_a} "
                                f"and lora_B of rank {rank_b}")
    return out


def read_magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharloraError(f"{path} not found") from None
    except (OSError, ValueError) as exc:
        raise CharloraError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(obj, dict):  # a list was an AttributeError traceback in check_base
        raise CharloraError(f"{path} is not a JSON object")
    return obj


def export_lora(adapter_dir: Path, base_dir: Path, out: str | Path | None = None, out_type: str = "f32") -> Path:
    """Write `<adapter_dir>/<name>.gguf` (or `out`) for llama.cpp; returns its path.

    Written to a temporary name and renamed, so a failed export leaves no half file.
    """
    import gguf
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from charlora.adapter import read_adapter_config

    if out_type not in OUT_TYPES:
        raise CharloraError(f"--outtype must be one of {', '.join(OUT_TYPES)}, got {out_type!r}")
    config = read_adapter_config(adapter_dir)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CharloraError("per-layer ranks or alphas (rank_pattern / alpha_pattern) have no place in a llama.cpp LoRA")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise CharloraError(f"{weights} not found (only safetensors adapters are exported)")
    base_config = read_json(base_dir / "config.json")
    try:
        lora = load_file(str(weights))
    except SafetensorError as exc:
        raise CharloraError(f"{weights} is not a readable safetensors file: {exc}") from None
    tensors = gguf_lora_tensors(lora, base_config)
    ranks = {array.shape[0] for name, array in tensors.items() if name.endswith(".lora_a")}
    if ranks != {int(config["r"])}:  # llama.cpp scales by alpha / r: a wrong r exported a wrong scale, exit 0
        raise CharloraError(f"adapter_config.json says r {config['r']} but the weights have rank "
                            f"{', '.join(map(str, sorted(ranks)))}: the adapter is damaged")
    # checked as every other output is: renaming over a FIFO or a device
    # (-o /dev/null, run as root) would replace it with a file, and -o naming
    # a file the export reads replaced the adapter's weights or config (or the
    # base's config.json) with the GGUF, exit 0
    out = out if out is not None else adapter_dir / f"{adapter_dir.name}.gguf"
    check_outputs([out], [weights, adapter_dir / "adapter_config.json", base_dir / "config.json"])
    real = output_target(out)  # before Path(): -o '' is refused, not taken for "."
    out = Path(out)
    if real.is_file() and read_magic(real) != b"GGUF":  # -o dataset.txt replaced the dialogue, exit 0
        raise CharloraError(f"{out} exists and is not a GGUF file; the export replaces only those (choose another -o)")
    tmp = real.with_name(f".{real.name}.partial")
    writer = gguf.GGUFWriter(tmp, check_base(base_config))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora_scale_alpha(config))
    writer.add_name(adapter_dir.name)
    if config.get("base_model_name_or_path"):
        writer.add_string("general.base_model.0.name", str(config["base_model_name_or_path"]))
        writer.add_uint32("general.base_model.count", 1)
    dtype = np.float32 if out_type == "f32" else np.float16
    for name, array in tensors.items():
        writer.add_tensor(name, array.astype(dtype))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(real)
    except OSError as exc:
        with contextlib.suppress(OSError):  # on a read-only disk the cleanup raised too, a traceback
            tmp.unlink(missing_ok=True)
        # numpy's tofile reports a short write with no errno: "24576 requested and 1992 written"
        why = exc.strerror or (f"the disk is full? ({exc})" if "requested and" in str(exc) else exc)
        raise CharloraError(f"cannot write {out}: {why}") from None
    return out


def read_lora(path: Path) -> dict[str, Any]:
    """A LoRA GGUF read back: {"architecture", "type", "adapter_type", "alpha",
    "tensors": {name: float32 array in PyTorch (rows, cols) order}}."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str):
        f = reader.get_field(key)
        return None if f is None else f.contents()

    return {"architecture": field("general.architecture"), "type": field("general.type"),
            "adapter_type": field("adapter.type"), "alpha": field("adapter.lora.alpha"),
            "base_model": field("general.base_model.0.name"),
            "tensors": {t.name: np.asarray(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
                        for t in reader.tensors}}

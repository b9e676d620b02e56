"""Stage 4: find a base model folder and load it for LoRA training or inference.

Everything loads through AutoModelForCausalLM / AutoTokenizer from a local
folder (no hub access, no trust_remote_code unless asked), so GPT-J/Pygmalion,
GPT-NeoX/Pythia, OPT, LLaMA-family and GPT-2 all take the same path.
`load_for_inference` is the one loader of chat, evaluation and any server
(adapters go on top with charlora.adapter.load_with_adapters); every check
(vocabulary, weights) runs there, as it does before training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from charlora.errors import CharloraError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GET_DEFAULT_MODEL = "python get_default_model.py"

# A model is loaded in 8-bit only when its 16-bit weights would take more than
# this share of the memory it runs in: the rest is needed for activations,
# LoRA optimizer state and the allocator.  8-bit trains about 2x slower
# (LLM.int8 on CPU here: 3.4 s vs 1.5 s a step), so it is the fallback, not the
# default.
FIT_FRACTION = 0.6


def resolve_dir(explicit: str | None, kind: str) -> tuple[Path, str | None]:
    """`models`/`loras` folder: the flag if given, else `<kind>/`, else the
    `user_data/<kind>/` that current text-generation-webui installs use.

    Returns the folder and a note to print when the webui layout was picked.
    The repository ships `models/` and `loras/` holding only a README, so a
    folder with just that README counts as absent.
    """
    if explicit:
        return Path(explicit), None
    plain, webui = Path(kind), Path("user_data") / kind
    unused = not plain.exists() or (plain.is_dir() and {p.name for p in plain.iterdir()} == {"README.md"})
    if unused and webui.is_dir():
        return webui, f"using {webui}/ (text-generation-webui layout)"
    return plain, None


def find_model(models_dir: Path, name: str) -> Path:
    """The folder of model `name`, or an error that lists what is there."""
    path = models_dir / name
    if (path / "config.json").is_file():
        return path
    there = sorted(p.name for p in models_dir.iterdir() if (p / "config.json").is_file()) if models_dir.is_dir() else []
    listing = f"models in {models_dir}/: {', '.join(there)}" if there else f"no models in {models_dir}/"
    problem = f"{path} has no config.json" if path.is_dir() else f"model {name!r} not found"
    return _raise(
        f"{problem}; {listing}; get the default model with `{GET_DEFAULT_MODEL}` "
        f"and train with `-m {DEFAULT_MODEL}`"
    )


def _raise(message: str):
    raise CharloraError(message)


def choose_quantization(requested: str, weights_16bit_bytes: int, memory_bytes: int | None) -> str:
    """'8bit' / '4bit' / 'none'.  'auto' picks 8-bit only when 16-bit won't fit."""
    if requested != "auto":
        return requested
    if memory_bytes is None or weights_16bit_bytes <= FIT_FRACTION * memory_bytes:
        return "none"
    return "8bit"


def available_memory(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def count_parameters(config: Any) -> int:
    """Exact parameter count without allocating weights (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def pick_dtype(requested: str, device: str):
    """bf16 where the hardware has it (all recent CPUs via autocast, Ampere+
    GPUs), fp16 on older GPUs, or what the user forces."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if requested != "auto":
        return table[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def config_errors() -> tuple[type[Exception], ...]:
    """What transformers raises for a damaged config.json: since transformers 5
    a value of the wrong type (`"hidden_size": null`, `"num_attention_heads":
    "9"`) or a size that does not divide is huggingface_hub's
    StrictDataclassError, a traceback in every command before it was caught."""
    from huggingface_hub.errors import StrictDataclassError

    return OSError, ValueError, TypeError, StrictDataclassError


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except config_errors() as exc:  # a damaged config.json or tokenizer file, or none at all
        raise CharloraError(f"cannot load the tokenizer in {path}: {one_line(exc)}") from None
    if tokenizer.eos_token_id is None:
        raise CharloraError(f"the tokenizer in {path} has no end-of-sequence token; the character could not learn to stop")
    if tokenizer.pad_token_id is None:
        # GPT-2, GPT-J and LLaMA tokenizers ship without one.  Reusing EOS is
        # safe: padding is masked out of attention and labels.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weights(path: Path, allow_pickle: bool = False) -> bool:
    """Refuse folders without weights, and pickle-only weights unless allowed.

    Pickle files (`pytorch_model.bin`) can run arbitrary code when loaded;
    safetensors can't.  Returns whether safetensors are used.
    """
    if any(path.glob("*.safetensors")):
        return True
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise CharloraError(f"{path} has a config.json but no weights (*.safetensors); copy the model's weight files there")
    if not allow_pickle:
        raise CharloraError(f"{path} has only pickle weights ({pickles[0]}), which can run code when loaded; "
                            "convert them to safetensors, or pass --allow_pickle if you trust their source")
    return False


def check_vocabulary(tokenizer, config, path: Path) -> None:
    """A tokenizer with ids beyond the model's embedding table belongs to another model."""
    n_tokens, n_embeddings = len(tokenizer), getattr(config, "vocab_size", None)
    if n_embeddings is not None and n_tokens > n_embeddings:
        raise CharloraError(f"the tokenizer in {path} has {n_tokens} tokens but the model has {n_embeddings} "
                            "embeddings: tokenizer and weights come from different models")


def load_model(path: Path, quantization: str, dtype, device: str, trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """AutoModelForCausalLM from a local folder, optionally 8/4-bit (bitsandbytes)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    safetensors = check_weights(path, allow_pickle)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": safetensors}
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    if device != "cpu" or quantization != "none":
        kwargs["device_map"] = {"": device}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        # RuntimeError: a tensor whose shape config.json does not give (the
        # report it points to is not shown: library logging is quiet)
        reason = ("a weight's shape does not match config.json" if "ignore_mismatched_sizes" in str(exc)
                  else one_line(exc))
        raise CharloraError(f"cannot load the model in {path}: {reason}") from None
    # transformers fills a tensor the files lack with random values and only
    # logs it (quietly here): a missing shard would train and chat on noise
    missing = sorted(info["missing_keys"])
    if missing:
        raise CharloraError(f"the weights in {path} lack {len(missing)} of the model's tensors ({missing[0]}"
                            f"{', ...' if len(missing) > 1 else ''}); copy all of the model's weight files there")
    return model


def one_line(exc: Exception, limit: int = 300) -> str:
    """A library exception's message as one line (some span several: "from one of:", then the list)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def without_peft(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (the model itself when
    unwrapped): where the output head and the decoder are reached, the
    adapters stay in place in its layers."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_packing(model) -> bool:
    """Does this model keep packed samples apart when only position ids mark them?

    transformers builds the per-sample mask from position restarts in most
    families (LLaMA, GPT-2, GPT-J, GPT-NeoX, ...) but not in all (OPT derives
    its mask without the position ids), and that can change between releases.
    So ask the model itself: a sequence packed twice must give the second copy
    the same logits as the first.  One forward over a few tokens, no grads.
    """
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([[5, 6, 7, 8]], device=device) % model.config.vocab_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids.repeat(1, 2), position_ids=torch.arange(4, device=device).repeat(1, 2),
                           use_cache=False).logits.float()
    except (TypeError, ValueError, RuntimeError):
        return False  # no position_ids argument, or it is used some other way
    finally:
        model.train(was_training)
    return torch.allclose(logits[0, :4], logits[0, 4:], rtol=1e-2, atol=1e-2)


def read_config(path: Path, trust_remote_code: bool = False):
    """The model's AutoConfig, or a CharloraError naming the folder."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except config_errors() as exc:  # TypeError: config.json holds a list, not an object
        raise CharloraError(f"cannot read the model config in {path}: {one_line(exc)}") from None


def meta_model(path: Path, trust_remote_code: bool = False):
    """The model's layers without weights (meta device): shapes for free."""
    import torch
    from transformers import AutoModelForCausalLM

    config = read_config(path, trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


@dataclass
class Loaded:
    """A model ready for generation, and how it was loaded."""

    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: Any
    quantization: str

    def describe(self) -> str:
        return f"on {self.device}, {str(self.dtype).removeprefix('torch.')}, quantization {self.quantization}"


def load_for_inference(path: Path, quantization: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                       allow_pickle: bool = False, log: Callable[[str], None] | None = None) -> Loaded:
    """Tokenizer and model from a model folder (find_model), in eval mode.

    The checks training runs come first: a tokenizer that belongs to another
    model, a folder without weights, pickle weights not allowed.  dtype and
    quantization are the flags' values ("auto": pick_dtype / choose_quantization).
    """
    device = pick_device()
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = load_tokenizer(path, trust_remote_code)
    config = read_config(path, trust_remote_code)
    check_vocabulary(tokenizer, config, path)
    check_weights(path, allow_pickle)
    quant = choose_quantization(quantization, 2 * count_parameters(config), available_memory(device))
    if quant != "none" and quantization == "auto" and log is not None:
        log("note: the model does not fit in memory in 16-bit; loading it in 8-bit (slower)")
    model = load_model(path, quant, torch_dtype, device, trust_remote_code, allow_pickle)
    model.eval()
    return Loaded(model, tokenizer, path, device, torch_dtype, quant)


def max_positions(model: Any, tokenizer: Any) -> int | None:
    """How many tokens the model reads at most (None: no known limit)."""
    return config_positions(model.config, tokenizer)


def check_cutoff(cutoff_len: int, limit: int | None) -> None:
    """Refuse a --cutoff_len longer than the model reads (`limit`: config_positions):
    past a learned position table (GPT-2, OPT) the forward raised IndexError mid-run."""
    if limit is not None and cutoff_len > limit:
        raise CharloraError(f"--cutoff_len {cutoff_len} is longer than this model reads ({limit} tokens); "
                            f"use -c {limit} or less")


def config_positions(config: Any, tokenizer: Any) -> int | None:
    """max_positions from the model's config alone (before any weights load)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None

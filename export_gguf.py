"""Write an adapter as a llama.cpp LoRA GGUF (llama-cli / llama-server --lora FILE.gguf).

    python export_gguf.py -l bob                              # -> loras/bob/bob.gguf
    python export_gguf.py -l bob -m SmolLM2-135M-Instruct -o bob-f16.gguf --outtype f16

Needs only the base model's config.json (the base named in the adapter, or -m).
The base model itself goes to llama.cpp as its own GGUF; to get one merged
file, run llama.cpp's `llama-export-lora -m base.gguf --lora bob.gguf -o merged.gguf`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlora import cli
from charlora.errors import CharloraError


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-l", "--lora_name", required=True, help="adapter folder inside the loras folder (or a path)")
    p.add_argument("-m", "--model_name", help="base model folder inside the models folder (default: the adapter's base)")
    p.add_argument("-o", "--outfile", help="where to write (default: <adapter>/<adapter name>.gguf)")
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="tensor type in the file")
    p.add_argument("--models_dir", help="models folder (default: models/ or user_data/models/)")
    p.add_argument("--loras_dir", help="adapters folder (default: loras/ or user_data/loras/)")
    return p


def export(args: argparse.Namespace) -> tuple[Path, str]:
    """(the GGUF written, the base model's name) for the parsed flags."""
    from charlora import models
    from charlora.adapter import adapter_base_name, find_adapter
    from charlora.gguf import export_lora

    adapter = find_adapter(models.resolve_dir(args.loras_dir, "loras")[0], args.lora_name)
    base = args.model_name or adapter_base_name(adapter)
    if not base:
        raise CharloraError(f"{adapter}/adapter_config.json names no base model; give it with -m")
    base_dir = models.find_model(models.resolve_dir(args.models_dir, "models")[0], base)
    return export_lora(adapter, base_dir, args.outfile, args.outtype), base


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return cli.run(lambda: report(*export(args)))


def report(out: Path, base: str) -> int:
    print(f"wrote {out}; use it with: llama-cli -m <{base} as GGUF> --lora {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

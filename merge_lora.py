"""Fold a trained adapter into a full copy of its base model, for tools that can't load adapters.

    python merge_lora.py -l bob                               # -> models/<base>-bob
    python merge_lora.py -l bob -m SmolLM2-135M-Instruct -o bob-merged

The same merge as `lora_finetune.py --merge`, for an adapter that is already
trained: one trained without --merge, or one whose --merge failed after the
adapter was saved (a full disk, Ctrl-C).  The base is read unquantized.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from charlora import cli
from charlora.errors import CharloraError, quiet_libraries, write_failure


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-l", "--lora_name", required=True, help="adapter folder inside the loras folder (or a path)")
    p.add_argument("-m", "--model_name", help="base model folder inside the models folder (default: the adapter's base)")
    p.add_argument("-o", "--outname", help="folder to write inside the models folder (default: <base>-<adapter>)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="weights of the merged model (auto: bf16, as training's --merge writes)")
    p.add_argument("--models_dir", help="models folder (default: models/ or user_data/models/)")
    p.add_argument("--loras_dir", help="adapters folder (default: loras/ or user_data/loras/)")
    return p


def merge(args: argparse.Namespace) -> Path:
    """The merged model folder written for the parsed flags."""
    from charlora import files, models
    from charlora.adapter import adapter_base_name, check_adapters_fit, find_adapter, merge_into_model
    from charlora.run_folder import ensure_writable

    adapter = find_adapter(models.resolve_dir(args.loras_dir, "loras")[0], args.lora_name)
    base = args.model_name or adapter_base_name(adapter)
    if not base:
        raise CharloraError(f"{adapter}/adapter_config.json names no base model; give it with -m")
    models_dir = models.resolve_dir(args.models_dir, "models")[0]
    base_dir = models.find_model(models_dir, base)
    check_adapters_fit([adapter], base_dir)  # an adapter of another model size: one line, before any weight is read
    out = models_dir / files.safe_name(args.outname or f"{base_dir.name}-{adapter.name}")
    if os.path.lexists(out):  # a broken link too: found only after the whole merge
        raise CharloraError(f"{out} already exists; remove it or choose another -o")
    ensure_writable(models_dir)
    try:
        merge_into_model(base_dir, adapter, out, models.pick_dtype(args.dtype, "cpu"))
    except Exception as exc:
        if (why := write_failure(exc)) is None:
            raise
        raise CharloraError(f"could not write {out} ({why}); nothing was left there") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    quiet_libraries()
    return cli.run(lambda: report(merge(args), args.models_dir))


def report(out: Path, models_dir: str | None) -> int:
    """The folder written and the flags that load it, quoted for a shell."""
    flags = ["-m", out.name, *(["--models_dir", models_dir] if models_dir else [])]
    print(f"wrote {out}; load it as a model: {shlex.join(flags)}", file=cli.GuardedOutput(sys.stdout), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

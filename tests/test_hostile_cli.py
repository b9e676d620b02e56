"""Hostile input at every command line: each bad path, number or file is one
`error:` line and exit status 2, no traceback, no hang, and no output file
replaced by a failed run.  Tiny models built from config (conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import export_gguf
from conftest import save_tiny_model


def one_error(capsys, rc) -> str:
    """The run's exit status was 2 and stderr holds exactly one line, `error: ...`."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, out, err)
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizers) -> Path:
    """<root>/models/llama and <root>/loras/bob, an untrained LoRA on it (no training: seconds saved)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hostile_cli")
    base = save_tiny_model("llama", tiny_tokenizers["llama-like"], root / "models")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(root / "loras" / "bob")
    return root


def gguf_args(root: Path, *extra: str) -> list[str]:
    return ["-l", "bob", "-m", "llama", "--models_dir", str(root / "models"), "--loras_dir", str(root / "loras"), *extra]


# ------------------------------------------------------------- export_gguf.py

def test_gguf_into_a_fifo_is_refused_and_the_fifo_kept(tiny, tmp_path, capsys):
    """Renaming the export over a FIFO (or, as root, over -o /dev/null) replaced it with a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", str(fifo))))
    assert line == f"error: cannot write {fifo}: it is not a regular file (a pipe, device or socket); choose an ordinary file name"
    assert fifo.is_fifo() and list(tmp_path.iterdir()) == [fifo]


def test_gguf_under_a_file_is_one_error(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", str(tmp_path / "afile" / "bob.gguf"))))
    assert line == f"error: cannot write {tmp_path / 'afile' / 'bob.gguf'}: Not a directory"

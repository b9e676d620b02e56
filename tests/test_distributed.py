"""Data-parallel training: two processes (torchrun, gloo on CPU) give the
adapter that one process gives with the same effective batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import lora_finetune

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(models_dir, tiny_dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    # No dropout or NEFTune noise: those draw from each process's own RNG.
    common = ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d", str(tiny_dataset),
              "-b", "2", "-e", "2", "--sample_replies", "0", "--dtype", "fp32", "--lora_dropout", "0",
              "--neftune_noise_alpha", "0", "--learning_rate", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                           "lora_finetune.py", *common, "-l", "ddp", "--grad_accum", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 processes x batch 2 = what one process does with batch 2 x accumulation 2
    assert lora_finetune.main([*common, "-l", "one", "--grad_accum", "2"]) == 0

    assert proc.stdout.count("saved ") == 1  # only the first process reports
    assert "4 samples (2 a batch x 1 accumulated x 2 processes)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]
    ddp, one = (json.loads((tmp_path / n / "charlora_config.json").read_text()) for n in ("ddp", "one"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["samples_per_step"] == one["samples_per_step"] == 4
    assert ddp["optimizer_steps"] == one["optimizer_steps"] == 8
    assert ddp["train_losses"] == pytest.approx(one["train_losses"], rel=1e-4)
    a, b = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("ddp", "one"))
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)

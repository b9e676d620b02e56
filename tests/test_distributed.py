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
from test_resume import wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session: a kill reaches torchrun's workers too
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "lora_finetune.py",
                             *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_two_processes_match_one(models_dir, tiny_dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    # No dropout or NEFTune noise: those draw from each process's own RNG.
    common = ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d", str(tiny_dataset),
              "-b", "2", "-e", "2", "--sample_replies", "0", "--dtype", "fp32", "--lora_dropout", "0",
              "--neftune_noise_alpha", "0", "--learning_rate", "1e-2"]
    run = torchrun([*common, "-l", "ddp", "--grad_accum", "1"])
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    # 2 processes x batch 2 = what one process does with batch 2 x accumulation 2
    assert lora_finetune.main([*common, "-l", "one", "--grad_accum", "2"]) == 0

    assert out.count("saved ") == 1  # only the first process reports
    assert "4 samples (2 a batch x 1 accumulated x 2 processes)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]
    ddp, one = (json.loads((tmp_path / n / "charlora_config.json").read_text()) for n in ("ddp", "one"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["samples_per_step"] == one["samples_per_step"] == 4
    assert ddp["optimizer_steps"] == one["optimizer_steps"] == 8
    assert ddp["train_losses"] == pytest.approx(one["train_losses"], rel=1e-4)
    a, b = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("ddp", "one"))
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_two_processes_killed_mid_epoch_resume_to_the_uninterrupted_adapter(models_dir, tiny_dataset, tmp_path):
    """16 samples, 2 processes x batch 2: 4 steps an epoch; checkpoint-10 is 2
    steps into the third.  The resumed epoch must see its own batches: with one
    process too few levels of wrappers hid this (the skipping loader of a
    multi-process resume kept epoch 0's order; weights 0.06 away)."""
    import signal

    import torch
    from safetensors.torch import load_file

    # the defaults otherwise: NEFTune and dropout draw from each process's RNG, restored per process
    common = ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d", str(tiny_dataset),
              "-b", "2", "-e", "8", "--sample_replies", "0", "--dtype", "fp32", "--learning_rate", "1e-2",
              "--save_steps", "5", "--early_stop", "0", "--grad_accum", "1"]
    run = torchrun([*common, "-l", "whole"])
    _, err = run.communicate(timeout=600)  # not wait(): a full pipe would block the run
    assert run.returncode == 0, err[-3000:]
    run = torchrun([*common, "-l", "cut"])
    wait_for(tmp_path / "cut" / "checkpoints" / "checkpoint-10" / "charlora_complete", run, timeout=300)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (tmp_path / "cut" / "adapter_config.json").exists(), "the run finished before it was killed"
    run = torchrun([*common, "-l", "cut", "--resume"])
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert "resuming from" in out + err
    whole, cut = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("whole", "cut"))
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=1e-4, atol=1e-5, msg=key)



@pytest.mark.parametrize("world, ran_atexit", [("1", True), ("2", False)])
def test_a_worker_of_a_multi_process_run_skips_the_interpreter_shutdown(world, ran_atexit):
    """exit_process: with WORLD_SIZE > 1 the process ends without the shutdown
    in which gloo's threads aborted it (CI failed a finished run so), its
    status and printed output kept."""
    code = ("import atexit, sys; from charlora.cli import exit_process; atexit.register(print, 'shutdown ran'); "
            "print('saved', end=''); print('note', file=sys.stderr, end=''); exit_process(3)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "WORLD_SIZE": world},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == ("saved" + ("shutdown ran\n" if ran_atexit else ""))
    assert done.stderr == "note"

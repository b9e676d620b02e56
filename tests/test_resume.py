"""Checkpoints, --resume and Ctrl-C: an interrupted run loses nothing and ends
with the same adapter as an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lora_finetune

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def args(models_dir, loras, dataset, name, *extra):
    # 12 training samples, batch 4: 3 steps an epoch; 40 epochs = 120 steps,
    # long enough to kill mid-way; defaults otherwise (NEFTune noise on),
    # so the RNG state has to be restored too.
    return ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(loras), "-d", str(dataset),
            "-l", name, "-b", "4", "-e", "40", "--grad_accum", "1", "--learning_rate", "1e-2",
            "--sample_replies", "0", "--dtype", "fp32", "--eval_split", "0.25", "--save_steps", "10",
            "--early_stop", "0", *extra]  # all 120 steps: early stopping (on by default) ended the reference at 45


def launch(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "lora_finetune.py", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc, timeout=120):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "no checkpoint appeared"
        time.sleep(0.01)


def tensors(folder: Path):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(models_dir, tiny_dataset, tmp_path_factory):
    loras = tmp_path_factory.mktemp("ref")
    assert lora_finetune.main(args(models_dir, loras, tiny_dataset, "a")) == 0
    return loras / "a"


def assert_same_adapter(folder: Path, reference: Path):
    import torch

    got, want = tensors(folder), tensors(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
    rec, ref = (json.loads((f / "charlora_config.json").read_text()) for f in (folder, reference))
    assert rec["optimizer_steps"] == ref["optimizer_steps"] == 120
    assert [s for s, _ in rec["eval_losses"]] == [s for s, _ in ref["eval_losses"]]  # every epoch scored once
    assert rec["kept_step"] == ref["kept_step"]
    assert rec["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4)


def test_killed_run_resumes_to_the_same_adapter(models_dir, tiny_dataset, tmp_path, reference):
    proc = launch(args(models_dir, tmp_path, tiny_dataset, "a"))
    # checkpoint-20 is 2 steps into an epoch of 3; the run may reach 30, an epoch's end, before the kill lands
    wait_for(tmp_path / "a" / "checkpoints" / "checkpoint-20" / "charlora_complete", proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: a crash or power cut
    proc.wait()
    assert not (tmp_path / "a" / "adapter_config.json").exists(), "the run finished before it was killed"

    # A fresh start would throw the checkpoints away: refused without a flag.
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "a")) == 2
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "a", "--resume")) == 0
    assert_same_adapter(tmp_path / "a", reference)
    assert not (tmp_path / "a" / "checkpoints").exists()  # a finished run keeps only the adapter


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(models_dir, tiny_dataset, tmp_path, reference):
    proc = launch(args(models_dir, tmp_path, tiny_dataset, "a"))
    wait_for(tmp_path / "a" / "checkpoints" / "checkpoint-20" / "charlora_complete", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped at step ") and last.endswith("run the same command with --resume to continue")
    step = int(last.split("stopped at step ")[1].split()[0])
    assert 20 <= step < 120
    assert (tmp_path / "a" / "checkpoints" / f"checkpoint-{step}" / "charlora_complete").is_file()
    assert not (tmp_path / "a" / "adapter_config.json").exists()
    assert "Traceback" not in err

    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "a", "--resume")) == 0
    assert_same_adapter(tmp_path / "a", reference)


def stop_after(step: int):
    """make_interrupt_saver whose saver acts as if Ctrl-C came during `step`:
    the same stop and save, at a step chosen, not one a signal happens to hit."""
    from charlora import checkpoints

    real = checkpoints.make_interrupt_saver

    def make(*args, **kwargs):
        saver = real(*args, **kwargs)
        on_step_end = saver.on_step_end

        def stop(args, state, control, **kw):
            saver.interrupted = saver.interrupted or state.global_step == step
            return on_step_end(args, state, control, **kw)

        saver.on_step_end = stop
        return saver

    return make


@pytest.mark.parametrize("step", [22, 47])
def test_resume_from_mid_epoch_gives_the_same_adapter(models_dir, tiny_dataset, tmp_path, reference, monkeypatch,
                                                       capsys, step):
    """Stopped one and two batches into an epoch (3 steps each), resumed: the
    rest of that epoch must see the batches the uninterrupted run saw."""
    from charlora import checkpoints

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "make_interrupt_saver", stop_after(step))
        assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "m")) == 130
    assert f"stopped at step {step}" in capsys.readouterr().err
    assert checkpoints.newest_checkpoint(tmp_path / "m" / "checkpoints").name == f"checkpoint-{step}"
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "m", "--resume")) == 0
    assert_same_adapter(tmp_path / "m", reference)


def test_resume_refuses_other_settings_and_missing_checkpoints(models_dir, tiny_dataset, tmp_path, capsys):
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "b", "--resume")) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err

    ckpts = tmp_path / "b" / "checkpoints"
    (ckpts / "checkpoint-10").mkdir(parents=True)
    (ckpts / "checkpoint-10" / "charlora_complete").write_text("10")
    # the settings of a run that differed only in its learning rate
    import dataclasses

    from charlora.train import TrainConfig

    parsed = vars(lora_finetune.make_parser().parse_args(args(models_dir, tmp_path, tiny_dataset, "b")))
    settings = dataclasses.asdict(TrainConfig(**{f.name: parsed[f.name] for f in dataclasses.fields(TrainConfig)}))
    (ckpts / "charlora_run.json").write_text(json.dumps({**settings, "learning_rate": 0.001}))
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "b", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume: the checkpoints in") and "--learning_rate 0.001 -> 0.01" in err
    assert len(err.splitlines()) == 1


def test_the_retraining_pass_starts_from_an_empty_checkpoints_folder_after_a_resumed_first_pass(
        models_dir, tiny_dataset, tmp_path, monkeypatch):
    """--retrain --resume: the first pass resumes from its checkpoint, the
    second starts afresh.  Its checkpoints must be the only ones in the
    folder, or an interrupted second pass would be resumed from the first
    pass's newest (higher-numbered) checkpoint, its over-fitted weights."""
    from charlora import checkpoints
    from charlora import train as train_module

    proc = launch(args(models_dir, tmp_path, tiny_dataset, "r", "--retrain"))
    wait_for(tmp_path / "r" / "checkpoints" / "checkpoint-20" / "charlora_complete", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    monkeypatch.setattr(train_module, "retrain_length", lambda history, step, epochs: 2)
    seen, real = [], train_module.run_trainer

    def watch(setup, plan, main_process):
        seen.append(sorted(p.name for p in plan.ckpt_dir.glob("checkpoint-*")))
        return real(setup, plan, main_process)

    monkeypatch.setattr(train_module, "run_trainer", watch)
    assert lora_finetune.main(args(models_dir, tmp_path, tiny_dataset, "r", "--retrain", "--resume")) == 0
    assert len(seen) == 2 and "checkpoint-20" in seen[0]  # the first pass resumed from its checkpoints
    assert seen[1] == []  # the second began with none of them
    record = json.loads((tmp_path / "r" / "charlora_config.json").read_text())
    assert record["retrained_epochs"] == 2 and record["optimizer_steps"] == 6
    assert checkpoints.newest_checkpoint(tmp_path / "r" / "checkpoints") is None


def test_an_epochs_sample_order_comes_from_the_seed_and_epoch_alone():
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from charlora.objective import epoch_seed, epoch_seeded

    assert [epoch_seed(0, 0), epoch_seed(0, 1), epoch_seed(1, 0)] == [2968811710, 3964924996, 1835504127]
    lengths = [5, 9, 2, 7, 7, 3, 8, 1, 6, 4, 9, 2]

    def order(seed, epoch, noise):
        sampler = epoch_seeded(LengthGroupedSampler(4, lengths=lengths), seed)
        torch.manual_seed(noise)  # the global RNG: dropout, NEFTune, whatever came before
        torch.rand(noise)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 5, 0) == order(3, 5, 7)  # a resumed run's RNG cannot change it
    assert sorted(order(3, 5, 0)) == list(range(12))
    assert len({tuple(order(3, epoch, 0)) for epoch in range(6)}) > 1  # each epoch is shuffled anew
    assert order(3, 0, 0) != order(4, 0, 0)
    # other samplers (--banded's random one, seeded by accelerate) are left as they are
    plain = torch.utils.data.SequentialSampler(lengths)
    assert epoch_seeded(plain, 3) is plain


def test_resume_takes_the_same_dataset_by_another_name_but_not_another_dataset(tmp_path, monkeypatch):
    """-d bob.json, then -d ./bob.json --resume was refused as other settings."""
    from charlora.checkpoints import check_resumable, record_run
    from charlora.errors import CharloraError

    monkeypatch.chdir(tmp_path)
    run = {"dataset_name": "bob.json", "epochs": 3, "dataset_sha256": "abc"}
    record_run(tmp_path / "ck", run)
    check_resumable(tmp_path / "ck", {**run, "dataset_name": "./bob.json"})
    check_resumable(tmp_path / "ck", {**run, "dataset_name": str(tmp_path / "bob.json")})
    with pytest.raises(CharloraError, match="other settings"):
        check_resumable(tmp_path / "ck", {**run, "dataset_name": "ann.json"})

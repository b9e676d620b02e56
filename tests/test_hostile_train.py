"""Hostile training runs (issue 14): each either trains right or stops with one
`error:` line, and none writes outside its folder or loses an earlier result.

Tiny models built from config (conftest.py); each run is a few optimizer steps.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lora_finetune
from charlora import guards
from charlora.checkpoints import COMPLETE, RUN_FILE
from charlora.errors import CharloraError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def argv(models_dir, loras, dataset, name="s", *extra):
    return ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(loras), "-d", str(dataset),
            "-l", name, "--sample_replies", "0", "--dtype", "fp32", "--max_steps", "4", "--save_steps", "2",
            "-b", "4", "--grad_accum", "1", *extra]


def one_error(capsys, rc) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert rc == 2 and len(lines) == 1, (rc, err)
    return lines[0]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_divergence_stops_with_an_error_and_no_nan_adapter(models_dir, tiny_dataset, tmp_path, capsys):
    rc = lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "s", "--lr", "1e30", "--max_steps", "8"))
    line = one_error(capsys, rc)
    assert "training diverged at step" in line and "lower --learning_rate" in line
    assert not (tmp_path / "s" / "adapter_model.safetensors").exists()
    # every checkpoint kept is a good one: finite weights
    from safetensors.torch import load_file

    for ckpt in (tmp_path / "s" / "checkpoints").glob("checkpoint-*"):
        for tensor in load_file(ckpt / "adapter_model.safetensors").values():
            assert bool(tensor.isfinite().all()), ckpt


def test_divergence_guard_passes_a_finite_run(models_dir, tiny_dataset, tmp_path):
    assert lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset)) == 0
    record = json.loads((tmp_path / "s" / "charlora_config.json").read_text())
    assert all(math.isfinite(x) for x in record["train_losses"])


def test_a_second_run_with_the_same_name_refuses(models_dir, tiny_dataset, tmp_path, capsys):
    held = guards.lock_adapter(tmp_path, "s")  # a first run, in the middle of training
    try:
        line = one_error(capsys, lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "s", "--overwrite")))
        assert "another run is already training --lora_name s" in line
        assert not (tmp_path / "s").exists()
        # another name is free
        assert lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "t")) == 0
    finally:
        held.release()
    assert lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "s")) == 0
    assert not (tmp_path / ".s.lock").exists()  # the lock file goes with the run


def test_lock_is_exclusive_and_reusable(tmp_path):
    first = guards.lock_adapter(tmp_path, "x")
    with pytest.raises(CharloraError, match="another run"):
        guards.lock_adapter(tmp_path, "x")
    first.release()
    again = guards.lock_adapter(tmp_path, "x")
    again.release()


def test_windows_lock_refuses_without_waiting(tmp_path):
    """On Windows the lock is msvcrt's: asked for without waiting (LK_NBLCK,
    not LK_LOCK's ten one-second retries), and a held lock surfaces as the
    BlockingIOError that lock_adapter turns into its one-line error."""
    import errno
    import os

    class FakeMsvcrt:
        LK_NBLCK, LK_LOCK = 2, 1

        def __init__(self):
            self.held, self.calls = set(), []

        def locking(self, fd, mode, nbytes):
            self.calls.append((mode, nbytes))
            inode = os.fstat(fd).st_ino
            if inode in self.held:
                raise OSError(errno.EACCES, "Permission denied")
            self.held.add(inode)

    fake, path = FakeMsvcrt(), tmp_path / ".w.lock"
    first, second = os.open(path, os.O_RDWR | os.O_CREAT), os.open(path, os.O_RDWR)
    try:
        guards.try_lock(first, msvcrt=fake)
        with pytest.raises(BlockingIOError):
            guards.try_lock(second, msvcrt=fake)
    finally:
        os.close(first), os.close(second)
    assert fake.calls == [(FakeMsvcrt.LK_NBLCK, 1)] * 2


def test_a_killed_runs_lock_does_not_block(tmp_path):
    """SIGKILL leaves the lock file behind, but the OS lock goes with the process."""
    code = ("import sys, time; from pathlib import Path; from charlora import guards; "
            "held = guards.lock_adapter(Path(sys.argv[1]), 'k'); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CharloraError, match="another run"):
            guards.lock_adapter(tmp_path, "k")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / ".k.lock").exists()
    guards.lock_adapter(tmp_path, "k").release()


def test_a_run_stopped_before_its_first_checkpoint_does_not_block(models_dir, tiny_dataset, tmp_path, capsys):
    # what Ctrl-C between the run record and the first step leaves
    (tmp_path / "s" / "checkpoints").mkdir(parents=True)
    (tmp_path / "s" / "checkpoints" / RUN_FILE).write_text("{}")
    line = one_error(capsys, lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "s", "--resume")))
    assert "--resume: no checkpoint in" in line and "start the run without --resume" in line
    assert lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "s")) == 0
    assert (tmp_path / "s" / "adapter_model.safetensors").is_file()


def test_resume_refuses_a_changed_dataset(models_dir, tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_bytes(tiny_dataset.read_bytes())
    proc = subprocess.Popen([sys.executable, "lora_finetune.py", *argv(models_dir, tmp_path, data, "s", "--max_steps", "400")],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "s" / "checkpoints" / "checkpoint-2" / COMPLETE
    end = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < end, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    samples = json.loads(data.read_text())
    samples[0]["output"] = "Something else entirely."
    data.write_text(json.dumps(samples))
    line = one_error(capsys, lora_finetune.main(argv(models_dir, tmp_path, data, "s", "--max_steps", "400", "--resume")))
    assert "the dataset" in line and "changed since the checkpoints" in line
    assert marker.exists()  # the checkpoints stay


@pytest.mark.parametrize("name", ["x" * 101, "x" * 250, "é" * 51, "a\nb", "a\x1bb", "../x", "/abs", ".", "..", ""])
def test_bad_lora_names_refused_before_training(models_dir, tiny_dataset, tmp_path, capsys, name):
    line = one_error(capsys, lora_finetune.main(argv(models_dir, tmp_path / "loras", tiny_dataset, name)))
    assert "--lora_name" in line
    assert not (tmp_path / "loras").exists() or list((tmp_path / "loras").iterdir()) == []


def test_a_100_byte_lora_name_trains(models_dir, tiny_dataset, tmp_path):
    assert lora_finetune.main(argv(models_dir, tmp_path, tiny_dataset, "n" * 100)) == 0
    assert (tmp_path / ("n" * 100) / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("speaker, expected", [
    ("../../x/pwn", "x_pwn.yaml"), ("/abs/path", "abs_path.yaml"), ("..", "character.yaml"),
    ("C" * 300, "C" * 120 + ".yaml"), ("Bob", "Bob.yaml"),
])
def test_character_file_stays_in_the_adapter_folder(models_dir, tiny_dataset, tmp_path, speaker, expected):
    samples = json.loads(tiny_dataset.read_text())
    hostile = [{"output": s["output"], "input": s["input"].rsplit("\n", 1)[0] + f"\n{speaker}:"} for s in samples]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(hostile))
    loras, chars = tmp_path / "loras", tmp_path / "chars"
    before = tree(tmp_path)
    assert lora_finetune.main(argv(models_dir, loras, data, "s", "--export_character", "--characters_dir", str(chars))) == 0
    assert (loras / "s" / expected).is_file() and sorted(p.name for p in chars.iterdir()) == [expected]
    new = tree(tmp_path) - before
    assert all(p.startswith(("loras/", "chars/")) or p in ("loras", "chars") for p in new), new


def test_merge_with_an_absolute_model_path_writes_inside_the_models_folder(models_dir, tiny_dataset, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "elsewhere"
    base = outside / "base"
    import shutil

    shutil.copytree(models_dir / "llama", base)
    args = argv(models, tmp_path / "loras", tiny_dataset, "s", "--merge")
    args[args.index("-m") + 1] = str(base)
    assert lora_finetune.main(args) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["base"]  # nothing beside the absolute base
    assert (models / "base-s" / "config.json").is_file()


@pytest.mark.parametrize("entry, message", [
    ({"output": "", "input": "Bob:"}, "empty \"output\""),
    ({"output": "   ", "input": "Bob:"}, "empty \"output\""),
    ({"output": "\u200b\u2028", "input": "Bob:"}, "empty \"output\""),
    ({"output": "hi\ud800", "input": "Bob:"}, "unpaired surrogate"),
    ({"output": "hi", "input": "\udfff Bob:"}, "unpaired surrogate"),
])
def test_bad_samples_refused(models_dir, tiny_dataset, tmp_path, capsys, entry, message):
    samples = json.loads(tiny_dataset.read_text()) + [entry]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))  # json.dumps writes a lone surrogate as \\ud800
    line = one_error(capsys, lora_finetune.main(argv(models_dir, tmp_path / "loras", data)))
    assert message in line and "entry 16" in line


def test_a_one_step_run_trains(models_dir, tiny_dataset, tmp_path):
    """The 5% warm-up rounded up to the whole of a one-step run (a small chat
    export), whose one step ran at learning rate 0: every lora_B stayed 0, an
    adapter equal to the base model, saved with exit 0."""
    from safetensors.torch import load_file

    assert lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d",
                               str(tiny_dataset), "-l", "one", "--max_steps", "1", "--sample_replies", "0"]) == 0
    weights = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = [t for k, t in weights.items() if "lora_B" in k]
    assert b and all(t.abs().max() > 0 for t in b)
    assert json.loads((tmp_path / "one" / "charlora_config.json").read_text())["optimizer_steps"] == 1


@pytest.mark.parametrize("fault, status, said", [
    ("ctrl-c", 130, "interrupted: stopped during the merge: the adapter is saved in {dest}, the merged model "
                    "{merged} was not written; merge it with: {later}"),
    ("disk full", 2, "error: could not write the merged model {merged} (No space left on device); the adapter is "
                     "saved in {dest}; merge it with: {later}"),
])
def test_a_merge_that_fails_says_the_adapter_was_saved(fault, status, said, models_dir, tiny_dataset, tmp_path,
                                                       monkeypatch, capsys):
    """Ctrl-C during --merge said "no adapter was written" of a saved adapter; a
    full disk there (safetensors' SafetensorError) was a traceback."""
    import errno

    from charlora import adapter

    def fail(*args, **kwargs):
        if fault == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(adapter, "merge_into_model", fail)
    loras = tmp_path / "loras"
    rc = lora_finetune.main(argv(models_dir, loras, tiny_dataset, "s", "--merge"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == status and "Traceback" not in "\n".join(err)
    later = f"python merge_lora.py -l s -m llama --models_dir {models_dir} --loras_dir {loras}"
    assert err[-1] == said.format(dest=loras / "s", merged=models_dir / "llama-s", later=later)
    assert (loras / "s" / "adapter_model.safetensors").is_file()
    # The command it names does the merge, as --merge would have.
    monkeypatch.undo()
    import shlex

    import merge_lora

    assert merge_lora.main(shlex.split(later)[2:]) == 0
    assert capsys.readouterr().out == f"wrote {models_dir / 'llama-s'}; load it as a model: -m llama-s --models_dir {models_dir}\n"
    import shutil

    shutil.rmtree(models_dir / "llama-s")  # models_dir is shared by the module's tests

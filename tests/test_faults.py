"""Faults a user's machine or files can cause: each is one clear error, and
no existing adapter or dataset is damaged."""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest

import lora_finetune


def run_error(capsys, args) -> str:
    """main() exits 2 and its last stderr line (after any progress bars of a
    run that got as far as training) is the one `error: ...` line."""
    rc = lora_finetune.main(args)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(l.startswith("error: ") for l in lines) == 1, err
    return lines[-1]

pytestmark = pytest.mark.slow


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def argv(models_dir, loras, dataset, *extra, model="llama"):
    return ["-m", model, "--models_dir", str(models_dir), "--loras_dir", str(loras), "-d", str(dataset),
            "-l", "t", "-b", "4", "-e", "1", "--sample_replies", "0", "--dtype", "fp32", *extra]


@pytest.fixture(scope="module")
def trained(models_dir, tiny_dataset, tmp_path_factory) -> Path:
    """loras/t: an existing adapter that a failed run must leave as it is."""
    loras = tmp_path_factory.mktemp("loras")
    assert lora_finetune.main(argv(models_dir, loras, tiny_dataset)) == 0
    return loras


@pytest.fixture
def loras(trained, tmp_path) -> Path:
    copy = tmp_path / "loras"
    shutil.copytree(trained, copy)
    return copy


def model_copy(models_dir: Path, tmp_path: Path, name="llama") -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir / name, root / name)
    return root


def test_pickle_only_weights_are_refused_unless_allowed(models_dir, tiny_dataset, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    root = model_copy(models_dir, tmp_path)
    weights = root / "llama" / "model.safetensors"
    torch.save(load_file(weights), root / "llama" / "pytorch_model.bin")
    weights.unlink()
    msg = run_error(capsys, argv(root, tmp_path / "loras", tiny_dataset))
    assert "has only pickle weights (pytorch_model.bin), which can run code" in msg and "--allow_pickle" in msg
    assert not (tmp_path / "loras" / "t").exists()
    assert lora_finetune.main(argv(root, tmp_path / "loras", tiny_dataset, "--allow_pickle")) == 0
    assert (tmp_path / "loras" / "t" / "adapter_model.safetensors").is_file()


def test_model_folder_without_weights(models_dir, tiny_dataset, tmp_path, capsys):
    root = model_copy(models_dir, tmp_path)
    (root / "llama" / "model.safetensors").unlink()
    msg = run_error(capsys, argv(root, tmp_path / "loras", tiny_dataset))
    assert msg == f"error: {root / 'llama'} has a config.json but no weights (*.safetensors); copy the model's weight files there"


def test_tokenizer_from_another_model(models_dir, tiny_dataset, tmp_path, capsys):
    root = model_copy(models_dir, tmp_path)
    config = json.loads((root / "llama" / "config.json").read_text())
    config["vocab_size"] = 100  # the tiny tokenizer has 400 tokens
    (root / "llama" / "config.json").write_text(json.dumps(config))
    msg = run_error(capsys, argv(root, tmp_path / "loras", tiny_dataset))
    assert "has 400 tokens but the model has 100 embeddings: tokenizer and weights come from different models" in msg


def test_truncated_dataset_is_refused_and_kept(models_dir, tiny_dataset, loras, tmp_path, capsys):
    data = tmp_path / "cut.json"
    raw = tiny_dataset.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    before = digest(loras / "t")
    msg = run_error(capsys, argv(models_dir, loras, data, "--overwrite"))
    assert msg.startswith(f"error: {data} is not a valid JSON dataset")
    assert data.read_bytes() == raw[: len(raw) // 2] and digest(loras / "t") == before


def disk_full(kind: str, filename) -> Exception:
    """What a full disk raises: OSError, or (as found on a real full tmpfs) torch.save's
    RuntimeError from its zip writer and safetensors' SafetensorError, which were tracebacks."""
    from safetensors import SafetensorError

    return {"OSError": OSError(errno.ENOSPC, "No space left on device", str(filename)),
            "torch.save": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960"),
            "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
            }[kind]


FULL_SAYS = {"OSError": "No space left on device",
             "torch.save": "[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960",
             "safetensors": "Error while serializing: I/O error: No space left on device (os error 28)"}


@pytest.mark.parametrize("kind", list(FULL_SAYS))
def test_disk_full_when_writing_the_adapter(kind, models_dir, tiny_dataset, loras, monkeypatch, capsys):
    """The run finished; writing the new adapter fails: the old one stays, the
    finished run's checkpoint stays, and --resume then writes it without retraining."""
    import peft.peft_model

    real_save = peft.peft_model.safe_save_file
    calls = []

    def full_at_final_write(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if ".t.partial" in str(filename):
            raise disk_full(kind, filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_at_final_write)
    before = digest(loras / "t")
    msg = run_error(capsys, argv(models_dir, loras, tiny_dataset, "--overwrite"))
    assert f"could not write the adapter ({FULL_SAYS[kind]})" in msg and "--resume" in msg
    assert digest(loras / "t") == before
    assert sorted(p.name for p in loras.iterdir()) == ["t"]  # no .t.partial left
    assert (loras / "t" / "checkpoints" / "checkpoint-2" / "charlora_complete").is_file()

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real_save)
    assert lora_finetune.main(argv(models_dir, loras, tiny_dataset, "--resume")) == 0
    out = capsys.readouterr().out
    assert "after 2 steps" in out
    assert digest(loras / "t") != before and not (loras / "t" / "checkpoints").exists()


@pytest.mark.parametrize("kind", list(FULL_SAYS))
def test_disk_full_during_training(kind, models_dir, tiny_dataset, loras, monkeypatch, capsys):
    import peft.peft_model

    def full(tensors, filename, *args, **kwargs):
        raise disk_full(kind, filename)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full)
    before = digest(loras / "t")
    msg = run_error(capsys, argv(models_dir, loras, tiny_dataset, "--overwrite", "--save_steps", "1"))
    assert msg.startswith("error: training stopped: could not write ") and f"({FULL_SAYS[kind]})" in msg
    assert digest(loras / "t") == before


def test_read_only_loras_folder(models_dir, tiny_dataset, loras, monkeypatch, capsys):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    before = digest(loras / "t")
    msg = run_error(capsys, argv(models_dir, loras, tiny_dataset, "--overwrite"))
    assert msg == f"error: cannot write to {loras}: Read-only file system"
    assert digest(loras / "t") == before and sorted(p.name for p in (loras / "t").iterdir()) == sorted(
        p.name for p in (loras / "t").iterdir() if p.name != "checkpoints")

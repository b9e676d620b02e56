"""The original layout on a fresh clone: dataset.txt beside the scripts,
models/ and loras/ shipped with a README each, users' files kept out of git."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import prepare_dataset
from charlora.models import resolve_dir

REPO = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                               reason="not a git checkout")


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_the_original_first_command_runs_on_the_shipped_dataset(tmp_path, monkeypatch):
    shutil.copy(REPO / "dataset.txt", tmp_path / "dataset.txt")
    monkeypatch.chdir(tmp_path)
    assert prepare_dataset.main(["--name", "Bob"]) == 0  # defaults: -t dataset.txt -j processed_dataset.json
    samples = json.loads((tmp_path / "processed_dataset.json").read_text(encoding="utf-8"))
    bob_lines = [l for l in (REPO / "dataset.txt").read_text(encoding="utf-8").splitlines() if l.startswith("Bob:")]
    assert len(samples) == len(bob_lines) == 21
    assert samples[0]["output"] == "The dough doesn't care what time it is, so I try not to either."
    assert all(s["input"].endswith("\nBob:") for s in samples)


@needs_git
def test_layout_files_are_tracked():
    tracked = git(REPO, "ls-files", "dataset.txt", "models/README.md", "loras/README.md").split()
    assert tracked == ["dataset.txt", "loras/README.md", "models/README.md"]


@needs_git
def test_users_files_and_linked_model_folders_stay_out_of_git(tmp_path):
    """A worktree whose models/ holds symlinks to model folders, and adapters
    in loras/, show nothing in `git status` but the shipped files."""
    git(tmp_path, "init", "-q")
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    for folder in ("models", "loras"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text("x\n")
    target = tmp_path.parent / f"{tmp_path.name}-elsewhere" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (tmp_path / "models" / "SmolLM2-135M-Instruct").symlink_to(target, target_is_directory=True)
    (tmp_path / "models" / "mine").mkdir()
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    (tmp_path / "loras" / "bob").mkdir()
    (tmp_path / "loras" / "bob" / "adapter_config.json").write_text("{}")
    (tmp_path / "dataset.txt").write_text("Bob:hi\n")
    (tmp_path / "processed_dataset.json").write_text("[]")
    status = git(tmp_path, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(status) == ["?? .gitignore", "?? dataset.txt", "?? loras/README.md", "?? models/README.md"]


def test_a_folder_with_only_its_readme_counts_as_absent(tmp_path, monkeypatch):
    """The shipped models/ (README only) must not hide a webui install's user_data/models."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "README.md").write_text("x\n")
    (tmp_path / "user_data" / "models").mkdir(parents=True)
    assert resolve_dir(None, "models") == (Path("user_data/models"), "using user_data/models/ (text-generation-webui layout)")
    (tmp_path / "models" / "SmolLM2-135M-Instruct").mkdir()
    assert resolve_dir(None, "models") == (Path("models"), None)

"""Where models and adapters are looked for (plain and text-generation-webui layouts)."""
from pathlib import Path

from charlora.models import resolve_dir


def test_plain_layout_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_dir(None, "models") == (Path("models"), None)


def test_webui_user_data_layout_is_used_and_announced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_data" / "loras").mkdir(parents=True)
    assert resolve_dir(None, "loras") == (Path("user_data/loras"), "using user_data/loras/ (text-generation-webui layout)")


def test_existing_plain_folder_wins_over_user_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_data" / "models").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    assert resolve_dir(None, "models") == (Path("models"), None)


def test_flag_overrides_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_data" / "models").mkdir(parents=True)
    assert resolve_dir("/elsewhere/models", "models") == (Path("/elsewhere/models"), None)

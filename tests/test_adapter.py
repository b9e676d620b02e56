"""What lora_finetune.py writes beside the weights: card, loss curve,
webui character file, and the merged model."""
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import lora_finetune
from charlora.adapter import adapter_scales, character_card, character_name
from charlora.errors import CharloraError

PROMPT = "Alice:Good morning, Bob. How many apples today?\nBob:"


def test_character_name_and_card_are_exact():
    samples = [{"output": "I have two apples for you, Alice.", "input": "Alice:Hi?\nBob:"},
               {"output": "Yes.", "input": "Bob:"},
               {"output": "Long long reply here.", "input": "Alice:Good morning.\nBob:Hello.\nAlice:Apples?\nBob:"}]
    assert character_name(samples) == "Bob"
    assert character_card("Bob", samples, examples=2) == {
        "name": "Bob",
        "greeting": "Yes.",
        "context": "The following is a conversation with Bob, who speaks as in these examples.\n\n"
                   "Alice:Hi?\nBob:I have two apples for you, Alice.\n\n"
                   "Alice:Apples?\nBob:Long long reply here.\n",
    }


@pytest.mark.parametrize("scales, expected", [(None, [1.0, 1.0]), ([0.5], [0.5, 0.5]), ([0.5, 2.0], [0.5, 2.0])])
def test_adapter_scales(scales, expected, tmp_path):
    assert adapter_scales([tmp_path / "a", tmp_path / "b"], scales) == expected


def test_adapter_scales_refuses_a_count_that_fits_neither_rule(tmp_path):
    with pytest.raises(CharloraError, match=r"one per adapter \(2\), got 3"):
        adapter_scales([tmp_path / "a", tmp_path / "b"], [1.0, 1.0, 1.0])
    assert adapter_scales([], None) == []  # the base model alone


def test_a_scale_without_an_adapter_is_refused():
    """chat.py --lora_scale 0.5 with no -l was accepted in silence: the base model answered, unscaled."""
    with pytest.raises(CharloraError, match=r"^--lora_scale scales adapters, and no adapter was given \(-l/--lora_name\)$"):
        adapter_scales([], [0.5])


def test_character_context_has_no_line_twice_and_keeps_its_token_budget(tiny_tokenizers):
    """Neighbouring samples share their context: the card once repeated one
    passage in every example.  Now each dataset line appears at most once,
    and the context stays within the budget as the model's tokenizer counts."""
    from charlora.dialogue import parse_dialogue
    from charlora.samples import build_samples

    text = (Path(__file__).resolve().parents[1] / "dataset.txt").read_text(encoding="utf-8")
    samples = build_samples(parse_dialogue(text), "Bob", rounds=5)
    tok = tiny_tokenizers["llama-like"]
    count = lambda t: len(tok(t)["input_ids"])  # noqa: E731
    for budget in (384, 120):
        context = character_card("Bob", samples, count, budget=budget)["context"]
        lines = [l for l in context.splitlines() if l]
        assert len(lines) == len(set(lines))
        assert count(context) <= budget
    assert character_card("Bob", samples, count, budget=384)["context"].count("Bob:") == 4
    assert character_card("Bob", samples, count, budget=120)["context"].count("Bob:") == 1
    assert character_card("Bob", samples, count, budget=10)["context"] == (
        "The following is a conversation with Bob, who speaks as in these examples.\n")


@pytest.fixture(scope="module")
def trained(models_dir, tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    rc = lora_finetune.main([
        "-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(root / "loras"), "-d", str(tiny_dataset),
        "-l", "bob", "-b", "4", "-e", "2", "--grad_accum", "1", "--learning_rate", "1e-2", "--dtype", "fp32",
        "-r", "8", "--sample_replies", "0", "--eval_split", "0.25", "--export_character",
        "--characters_dir", str(root / "characters"), "--merge", "--export_gguf",
    ])
    assert rc == 0
    yield root
    import shutil

    shutil.rmtree(models_dir / "llama-bob", ignore_errors=True)  # the merge lands beside the base model


def test_card_names_everything_a_person_needs(trained, models_dir):
    adapter = trained / "loras" / "bob"
    card = (adapter / "README.md").read_text()
    record = json.loads((adapter / "charlora_config.json").read_text())
    assert record["character"] == "Bob" and record["train_samples"] == 12 and record["eval_samples"] == 4
    assert "a LoRA adapter that talks like Bob" in card
    assert "Base model: `llama`, trained in float32" in card
    assert "Set the chat mode to **chat**" in card and "`user_data/characters/`" in card
    # A base another machine can resolve, not this machine's path; the GGUF beside the weights.
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "llama"
    assert (adapter / "bob.gguf").read_bytes()[:4] == b"GGUF"
    assert "12 training samples, 4 held out" in card
    assert "| `lora_rank` | `8` |" in card and "| `learning_rate` | `0.01` |" in card
    assert f"Held-out loss: {record['eval_loss']:.3f} per reply token" in card
    assert (adapter / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_character_file_in_adapter_and_characters_folder(trained, tiny_dataset, models_dir):
    from transformers import AutoTokenizer

    samples = json.loads(tiny_dataset.read_text())
    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    expected = character_card("Bob", samples, lambda t: len(tok(t)["input_ids"]))
    for path in (trained / "loras" / "bob" / "Bob.yaml", trained / "characters" / "Bob.yaml"):
        assert yaml.safe_load(path.read_text()) == expected


def test_merged_model_matches_base_plus_adapter(trained, models_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    enc = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        peft_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models_dir / "llama"),
                                                trained / "loras" / "bob")(**enc).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(models_dir / "llama-bob")(**enc).logits
        base_logits = AutoModelForCausalLM.from_pretrained(models_dir / "llama")(**enc).logits
    assert (peft_logits - base_logits).abs().max() > 1e-3
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-4)


def test_the_adapter_and_the_merged_model_are_readable_as_every_other_file(trained, models_dir):
    """safetensors 0.8 writes its files 0600: the weights alone, of all the files
    in the folder, could not be read by a webui running as another user."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for folder in (trained / "loras" / "bob", models_dir / "llama-bob"):
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir() if p.is_file()}
        assert "adapter_model.safetensors" in modes or "model.safetensors" in modes
        assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


class Full(io.StringIO):
    def write(self, text):
        raise OSError(28, "No space left on device")


def test_merge_lora_py_merges_a_trained_adapter_as_merge_did(trained, models_dir, capsys, monkeypatch):
    """merge_lora.py: the --merge of an adapter already trained (one whose --merge failed)."""
    from safetensors.torch import load_file

    import merge_lora

    loras = str(trained / "loras")
    argv = ["-l", "bob", "--models_dir", str(models_dir), "--loras_dir", loras, "--dtype", "fp32"]
    try:
        assert merge_lora.main([*argv, "-o", "bob again"]) == 0, capsys.readouterr().err
        # the flags that load it, as a shell reads them (its own models folder named, the space quoted)
        assert capsys.readouterr().out == (f"wrote {models_dir / 'bob again'}; load it as a model: "
                                           f"-m 'bob again' --models_dir {models_dir}\n")
        (models_dir / "bob again").rename(models_dir / "bob-again")
        again, once = (load_file(models_dir / d / "model.safetensors") for d in ("bob-again", "llama-bob"))
        assert again.keys() == once.keys() and all(torch.equal(again[k], once[k]) for k in once)
        assert merge_lora.main([*argv, "-o", "bob-again"]) == 2  # never over an existing folder
        assert capsys.readouterr().err == f"error: {models_dir / 'bob-again'} already exists; remove it or choose another -o\n"
        assert merge_lora.main([*argv, "-m", "gpt2", "-o", "x"]) == 2  # another model's adapter: before any weight is read
        assert capsys.readouterr().err.startswith(f"error: adapter {trained / 'loras' / 'bob'} does not fit")
        assert not (models_dir / "x").exists()
        monkeypatch.setattr("sys.stdout", Full())  # merge_lora.py > /dev/full: a traceback after the merge
        assert merge_lora.main([*argv, "-o", "bob-out"]) == 2
        monkeypatch.undo()
        assert capsys.readouterr().err.splitlines()[-1] == "error: cannot write to standard output (No space left on device); stopped"
        (models_dir / "dangling").symlink_to(models_dir / "nowhere")  # refused up front, not after the merge
        assert merge_lora.main([*argv, "-o", "dangling"]) == 2
        assert capsys.readouterr().err == f"error: {models_dir / 'dangling'} already exists; remove it or choose another -o\n"
    finally:
        import shutil

        shutil.rmtree(models_dir / "bob-again", ignore_errors=True)
        shutil.rmtree(models_dir / "bob-out", ignore_errors=True)
        (models_dir / "dangling").unlink(missing_ok=True)


def test_merge_lora_py_on_a_full_disk_is_one_line_and_leaves_nothing(trained, models_dir, capsys, monkeypatch):
    """The tokenizers library says a full disk with a plain Exception ("... (os error 28)"): a traceback."""
    import merge_lora
    from transformers import PreTrainedTokenizerBase

    def full(self, *args, **kwargs):
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    argv = ["-l", "bob", "--models_dir", str(models_dir), "--loras_dir", str(trained / "loras"), "-o", "bob-full"]
    assert merge_lora.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: could not write {models_dir / 'bob-full'} (No space "
                                                        "left on device (os error 28)); nothing was left there")
    assert not (models_dir / "bob-full").exists() and not list(models_dir.glob(".bob-full*"))


def test_merge_refuses_to_overwrite(trained, models_dir, tiny_dataset, capsys):
    rc = lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(trained / "loras"),
                             "-d", str(tiny_dataset), "-l", "bob", "--overwrite", "--merge"])
    assert rc == 2
    assert "llama-bob already exists" in capsys.readouterr().err


def test_a_merge_that_fails_leaves_no_partial_folder(models_dir, tmp_path, monkeypatch):
    """--merge writes models/.<name>.partial and renames it; a failure on
    the way (here the tokenizer, after the model's weights are written) left
    that model-sized folder behind, and the next merge wrote into it."""
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from charlora.adapter import merge_into_model

    base = AutoModelForCausalLM.from_pretrained(models_dir / "llama")
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "ad")
    out = tmp_path / "models" / "llama-ad"
    out.parent.mkdir()
    (out.parent / ".llama-ad.partial").mkdir()
    (out.parent / ".llama-ad.partial" / "stale.safetensors").write_text("from an earlier merge")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        merge_into_model(models_dir / "llama", tmp_path / "ad", out, torch.float32)
    assert list(out.parent.iterdir()) == []
    monkeypatch.undo()
    (out.parent / ".llama-ad.partial").mkdir()
    (out.parent / ".llama-ad.partial" / "stale.safetensors").write_text("from an earlier merge")
    merge_into_model(models_dir / "llama", tmp_path / "ad", out, torch.float32)
    assert sorted(p.name for p in out.parent.iterdir()) == ["llama-ad"]
    assert not (out / "stale.safetensors").exists() and (out / "config.json").is_file()

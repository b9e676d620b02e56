"""Hostile input at every command line: each bad path, number or file is one
`error:` line and exit status 2, no traceback, no hang, and no output file
replaced by a failed run.  Tiny models built from config (conftest.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import export_gguf
from conftest import save_tiny_model


def one_error(capsys, rc) -> str:
    """The run's exit status was 2 and stderr ends with its one line `error: ...`
    (after the progress bars of a model load, where it got that far)."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.strip().splitlines() if not line.startswith("Loading weights")]
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


# ------------------------------------------------------------- damaged model folders

def damage(root: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the tiny llama's models folder with one file damaged as `how` says."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    folder = models / "llama"
    weights = folder / "model.safetensors"
    if how == "config not JSON":
        (folder / "config.json").write_text('{"model_type": ')
    elif how == "config a list":
        (folder / "config.json").write_text("[1, 2]")
    elif how in ("config size null", "config heads a string"):
        import json

        config = json.loads((folder / "config.json").read_text())
        key, value = ("hidden_size", None) if how == "config size null" else ("num_attention_heads", "4")
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
    elif how == "tokenizer not JSON":
        (folder / "tokenizer.json").write_text("{")
    elif how == "no tokenizer":
        for path in folder.glob("tokenizer*"):
            path.unlink()
    elif how == "weights cut short":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "weights empty":
        weights.write_bytes(b"")
    elif how == "a weight of another shape":
        from safetensors.torch import load_file, save_file
        import torch

        tensors = load_file(weights)
        tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
        save_file(tensors, weights, metadata={"format": "pt"})
    elif how == "a weight missing":
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        del tensors["model.layers.0.self_attn.q_proj.weight"]
        save_file(tensors, weights, metadata={"format": "pt"})
    elif how == "NaN weights":
        from safetensors.torch import load_file, save_file
        import torch

        tensors = load_file(weights)
        tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
        save_file(tensors, weights, metadata={"format": "pt"})
    return models


DAMAGE = {
    "config not JSON": "cannot load the tokenizer in {folder}: It looks like the config file at '{folder}/config.json' "
                       "is not a valid JSON file.",
    "config a list": "cannot load the tokenizer in {folder}: transformers.configuration_utils.PreTrainedConfig() "
                     "argument after ** must be a mapping, not list",
    # transformers 5 checks a config's types: a StrictDataclassError traceback before it was caught
    "config size null": "cannot load the tokenizer in {folder}: Validation error for field 'hidden_size': TypeError: "
                        "Field 'hidden_size' expected int, got NoneType (value: None)",
    "config heads a string": "cannot load the tokenizer in {folder}: Validation error for field 'num_attention_heads': "
                             "TypeError: Field 'num_attention_heads' expected int, got str (value: '4')",
    "tokenizer not JSON": "cannot load the tokenizer in {folder}: Expecting property name enclosed in double quotes: "
                          "line 1 column 2 (char 1)",
    "no tokenizer": "cannot load the tokenizer in {folder}: Couldn't instantiate the backend tokenizer from one of: "
                    "(1) a `tokenizers` library serialization file,",
    "weights cut short": "cannot load the model in {folder}: Error while deserializing header: invalid header length",
    "weights empty": "cannot load the model in {folder}: Error while deserializing header: header too small",
    "a weight of another shape": "cannot load the model in {folder}: a weight's shape does not match config.json",
    # was no error at all: the tensor started random and chat.py talked noise
    "a weight missing": "the weights in {folder} lack 1 of the model's tensors "
                        "(model.layers.0.self_attn.q_proj.weight); copy all of the model's weight files there",
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_model_folder_is_one_error_line(how, tiny, tmp_path, capsys):
    import chat

    models = damage(tiny, tmp_path, how)
    line = one_error(capsys, chat.main(["-m", "llama", "--models_dir", str(models), "-n", "Bob", "--say", "hi"]))
    assert line.startswith("error: " + DAMAGE[how].format(folder=models / "llama")), line


# ------------------------------------------------------------- serve.py

def test_a_port_in_use_is_one_error_line_before_the_model_loads(tmp_path, capsys):
    """uvicorn logged `ERROR: [Errno 98] ...` and exited 3, after loading the model
    and printing that it was serving; here no model exists, so reaching it would fail otherwise."""
    import socket

    import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error(capsys, serve.main(["-m", "nowhere", "--models_dir", str(tmp_path), "-n", "Bob",
                                             "--port", str(port)]))
    assert line == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("port", ["-1", "65536", str(10 ** 20)])
def test_a_port_out_of_range_is_one_error_line(port, tmp_path, capsys):
    import serve

    line = one_error(capsys, serve.main(["-m", "nowhere", "--models_dir", str(tmp_path), "-n", "Bob", "--port", port]))
    assert line == f"error: --port must be in [0, 65535], got {port}"


def test_port_0_listens_on_one_chosen_port_on_every_address():
    """--port 0: the OS picks a port for the first address and every other
    address takes the same one, which is the port serve.py prints (it
    printed 0, and each address got a port of its own)."""
    import socket

    from charlora.server import bound_port, listen

    sockets = listen("", 0)  # every interface: 0.0.0.0 and :: where IPv6 is on
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(sockets) == 1 + socket.has_ipv6
        assert len(ports) == 1 and bound_port(sockets) in ports and bound_port(sockets) > 0
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------- prepare_dataset.py

@pytest.mark.parametrize("name", ["", ".", "/", "out/"])
def test_a_dataset_name_without_a_file_name_is_one_error_line(name, tmp_path, capsys, monkeypatch):
    """The .source.json name derived from it was a ValueError traceback;
    "out/" (meant as a folder) wrote a file named out."""
    import prepare_dataset

    (tmp_path / "d.txt").write_text("Alice:Hi.\nBob:Hello.\n")
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, prepare_dataset.main(["-n", "Bob", "-t", "d.txt", "-j", name]))
    assert line == f"error: cannot write {name!r}: it is not a file name"
    assert [p.name for p in tmp_path.iterdir()] == ["d.txt"]


# ------------------------------------------------------------- lora_finetune.py

def train_error(capsys, tmp_path, *flags: str) -> str:
    """lora_finetune.py's one error line for flags refused before any file is read (no model exists)."""
    import lora_finetune

    return one_error(capsys, lora_finetune.main(["-m", "nowhere", "--models_dir", str(tmp_path), "--loras_dir",
                                                 str(tmp_path / "loras"), "-d", str(tmp_path / "none.json"), *flags]))


def test_max_steps_0_is_refused(tmp_path, capsys):
    """It trained one optimizer step, said "20 optimizer steps" and saved that adapter as a success."""
    assert train_error(capsys, tmp_path, "--max_steps", "0") == \
        "error: --max_steps must be -1 (every epoch) or a number of steps, got 0"


@pytest.mark.parametrize("flag", ["--batch_size", "--grad_accum"])
def test_a_batch_past_any_memory_is_refused(flag, tmp_path, capsys):
    """-b 10**20 was a traceback from the data loader once training had started."""
    assert train_error(capsys, tmp_path, flag, str(10 ** 20)) == f"error: {flag} must be in [1, 1e+06], got {10 ** 20}"


def test_window_counts_past_any_context_are_refused(tmp_path, capsys):
    """--pcw_windows / --pcw 10**20 hung in the window split's loop (one pass per window)."""
    import chat

    assert train_error(capsys, tmp_path, "--pcw_windows", str(10 ** 20)) == \
        f"error: --pcw_windows must be in [0, 1000], got {10 ** 20}"
    line = one_error(capsys, chat.main(["-m", "nowhere", "--models_dir", str(tmp_path), "-n", "Bob", "--say", "hi",
                                        "--pcw", str(10 ** 20)]))
    assert line == f"error: --pcw must be in [0, 1000], got {10 ** 20}"


# ------------------------------------------------------------- chat.py

@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_a_seed_out_of_numpys_range_is_one_error_line(seed, tmp_path, capsys):
    """It was a ValueError traceback from the seeding, after the model had loaded."""
    import chat

    line = one_error(capsys, chat.main(["-m", "nowhere", "--models_dir", str(tmp_path), "-n", "Bob", "--say", "hi",
                                        "--seed", seed]))
    assert line == f"error: --seed must be in [0, 4.29497e+09], got {seed}"


# ------------------------------------------------------------- --cutoff_len and the model's positions

def test_a_cutoff_past_the_models_positions_is_refused(models_dir, tiny_dataset, tmp_path, capsys):
    """GPT-2 learns a table of 512 positions here: -c 600 was an IndexError
    traceback mid-training (after the data report) and mid-evaluation once a
    sample was longer than 512 tokens, and went unnoticed while none was."""
    import evaluate
    import lora_finetune

    want = "error: --cutoff_len 600 is longer than this model reads (512 tokens); use -c 512 or less"
    assert one_error(capsys, lora_finetune.main(
        ["-m", "gpt2", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"), "-d", str(tiny_dataset),
         "-c", "600"])) == want
    assert list((tmp_path / "loras").rglob("*")) == []  # the run's folder plan made loras/ itself, nothing in it
    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Alice:Hi.\nBob:Hello.\n")
    assert one_error(capsys, evaluate.main(["-m", "gpt2", "--models_dir", str(models_dir), "-n", "Bob",
                                            "-t", str(dialogue), "-c", "600"])) == want


def test_evaluate_refuses_a_long_cutoff_before_training_missing_seeds(models_dir, tiny_dataset, tmp_path, capsys):
    """With --seeds and -d, evaluate.py trains each missing seed first: the
    cutoff was checked only after that training, when the model loaded for
    scoring, so a bad -c cost every seed's training before its error line."""
    import evaluate

    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Alice:Hi.\nBob:Hello.\n")
    line = one_error(capsys, evaluate.main(["-m", "gpt2", "--models_dir", str(models_dir), "-n", "Bob",
                                            "--loras_dir", str(tmp_path / "loras"), "-l", "bob", "--seeds", "2",
                                            "-d", str(tiny_dataset), "-t", str(dialogue), "-c", "600"]))
    assert line == "error: --cutoff_len 600 is longer than this model reads (512 tokens); use -c 512 or less"
    assert not (tmp_path / "loras" / "bob-seed1").exists()


def test_evaluate_seeds_leaves_a_folder_that_holds_no_adapter(models_dir, tiny_dataset, tmp_path, capsys):
    """evaluate.py --seeds -d trained every seed whose folder held no finished
    adapter with --overwrite: an interrupted run's checkpoints, or any file the
    user kept there, were deleted.  Now one line, before any seed trains."""
    import evaluate

    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Alice:Hi.\nBob:Hello.\n")
    kept = tmp_path / "loras" / "bob-seed2" / "checkpoints" / "checkpoint-7" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    line = one_error(capsys, evaluate.main(["-m", "llama", "--models_dir", str(models_dir), "-n", "Bob",
                                            "--loras_dir", str(tmp_path / "loras"), "-l", "bob", "--seeds", "2",
                                            "-d", str(tiny_dataset), "-t", str(dialogue)]))
    assert line == (f"error: {tmp_path / 'loras' / 'bob-seed2'} is there but holds no finished adapter; finish it "
                    "with lora_finetune.py -l bob-seed2 --seed 2 --resume, or move it away")
    assert kept.read_text() == "mine"
    assert not (tmp_path / "loras" / "bob-seed1").exists()  # refused before seed 1 trained


def test_banded_positions_past_the_models_table_are_refused(models_dir, tmp_path, capsys):
    """Positions run on through a band, so with long lines a band passed
    GPT-2's 512 learned positions although every sample fit: an IndexError
    traceback in the first step.  Now one line before training."""
    import json

    import lora_finetune

    from charlora.dialogue import parse_dialogue
    from charlora.samples import build_samples

    words = " ".join(f"word{i}" for i in range(60))
    text = "".join(f"Alice:{words} again {k}\nBob:{words} reply {k}\n" for k in range(40))
    data = tmp_path / "long.json"
    data.write_text(json.dumps(build_samples(parse_dialogue(text), "Bob", rounds=5)))
    line = one_error(capsys, lora_finetune.main(
        ["-m", "gpt2", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"), "-d", str(data),
         "-c", "512", "--banded", "--sample_replies", "0", "--dtype", "fp32", "--max_steps", "1"]))
    assert line.startswith("error: --banded: a band reaches position ") and line.endswith(
        "past the 512 this model reads; train without --banded, or with a smaller --cutoff_len")


@pytest.mark.parametrize("decoding", [["--temperature", "0.7"], ["--greedy"], ["--greedy", "--pcw", "2"]])
def test_sampling_from_nan_scores_is_one_error_line(tiny, tmp_path, capsys, decoding):
    """torch.multinomial's RuntimeError on NaN probabilities was a traceback;
    greedy decoding took token 0 from them and printed garbage, exit 0."""
    import chat

    models = damage(tiny, tmp_path, "NaN weights")
    line = one_error(capsys, chat.main(["-m", "llama", "--models_dir", str(models), "-n", "Bob", "--say", "hi",
                                        *decoding]))
    assert line == ("error: the model's next-token probabilities are not numbers (NaN or infinity): its weights are "
                    "damaged, or --lora_scale is too large")


def test_export_character_into_a_file_or_onto_a_fifo(models_dir, tiny_dataset, tmp_path, capsys):
    """--characters_dir naming a file was a FileExistsError traceback after the
    whole run; a FIFO where Bob.yaml goes made the run hang at its end (open for writing)."""
    import lora_finetune

    def run(characters: Path, name: str, *extra: str) -> int:
        return lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path / "loras"),
                                   "-d", str(tiny_dataset), "-l", name, "--max_steps", "1", "--sample_replies", "0",
                                   "--dtype", "fp32", "--export_character", "--characters_dir", str(characters), *extra])

    (tmp_path / "afile").write_text("x")
    assert one_error(capsys, run(tmp_path / "afile", "a")) == f"error: cannot write to {tmp_path / 'afile'}: it is a file, not a folder"
    assert not (tmp_path / "loras" / "a").exists()  # refused before training
    (tmp_path / "chars").mkdir()
    (tmp_path / "chars" / "Bob.yaml").write_text("name: Bob\ncontext: my own\n")  # the user's hand-made file
    assert one_error(capsys, run(tmp_path / "chars", "c")) == (
        f"error: {tmp_path / 'chars' / 'Bob.yaml'} already exists; add --overwrite to replace it, or move it away")
    assert (tmp_path / "chars" / "Bob.yaml").read_text() == "name: Bob\ncontext: my own\n"  # was replaced, exit 0
    assert not (tmp_path / "loras" / "c").exists()  # refused before training
    (tmp_path / "chars" / "Bob.yaml").unlink()
    os.mkfifo(tmp_path / "chars" / "Bob.yaml")
    rc = run(tmp_path / "chars", "b", "--overwrite")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: cannot write {tmp_path / 'chars' / 'Bob.yaml'}: it is not a regular "
                                            "file (a pipe, device or socket); choose an ordinary file name")
    assert (tmp_path / "chars" / "Bob.yaml").is_fifo() and (tmp_path / "loras" / "b" / "Bob.yaml").is_file()


@pytest.mark.parametrize("text", ["[]", '"x"', "null"])
def test_a_source_file_that_is_not_an_object_is_not_used(text, tmp_path):
    """<dataset>.source.json holding a list, a string or null was an
    AttributeError traceback in training; it is skipped as an unreadable one is."""
    from charlora.source import load_source

    (tmp_path / "d.source.json").write_text(text)
    assert load_source(tmp_path / "d.json", [{"output": "hi", "input": "Bob:"}]) == \
        (None, "d.source.json is not a JSON object")


def test_an_empty_output_path_is_refused_not_ignored(tiny, tmp_path, capsys, monkeypatch):
    """evaluate.py --json '' wrote no JSON and export_gguf.py -o '' wrote to the
    default path, both with exit 0 (an unset shell variable, "--json $OUT")."""
    import evaluate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text("Alice:Hi.\nBob:Hello.\n")
    want = "error: cannot write '': it is not a file name"
    assert one_error(capsys, evaluate.main(["-m", "nowhere", "-n", "Bob", "-t", "d.txt", "--json", ""])) == want
    assert one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", ""))) == want
    assert not (tiny / "loras" / "bob" / "bob.gguf").exists()


# ------------------------------------------------------------- damaged adapters

BAD_ADAPTER = {
    "a list": ("[1]", 'is not a LoRA adapter\'s config (it needs "peft_type": "LORA")'),
    "an empty object": ("{}", 'is not a LoRA adapter\'s config (it needs "peft_type": "LORA")'),
    "a text rank": ('{"peft_type": "LORA", "r": "8", "lora_alpha": 16}',
                    'needs a whole "r" of 1 or more and a number "lora_alpha", got \'8\' and 16'),
    "no alpha": ('{"peft_type": "LORA", "r": 8}', 'needs a whole "r" of 1 or more and a number "lora_alpha", got 8 and None'),
}


@pytest.mark.parametrize("how", list(BAD_ADAPTER))
def test_a_damaged_adapter_config_is_one_error_line_in_chat_and_export(how, tiny, tmp_path, capsys):
    """Each was a KeyError / TypeError / AttributeError traceback from PEFT or the GGUF export."""
    import shutil

    import chat

    text, problem = BAD_ADAPTER[how]
    loras = tmp_path / "loras"
    shutil.copytree(tiny / "loras" / "bob", loras / "bob")
    (loras / "bob" / "adapter_config.json").write_text(text)
    want = f"error: {loras / 'bob' / 'adapter_config.json'} {problem}"
    assert one_error(capsys, chat.main(["-m", "llama", "--models_dir", str(tiny / "models"), "--loras_dir", str(loras),
                                        "-l", "bob", "-n", "Bob", "--say", "hi"])) == want
    assert one_error(capsys, export_gguf.main(["-l", "bob", "-m", "llama", "--models_dir", str(tiny / "models"),
                                               "--loras_dir", str(loras)])) == want


def test_an_adapter_without_weights_or_with_cut_weights_is_one_error_line(tiny, tmp_path, capsys):
    """No weights: chat said "Repo id must be a string"; cut weights: the export's traceback."""
    import shutil

    import chat

    loras = tmp_path / "loras"
    shutil.copytree(tiny / "loras" / "bob", loras / "bob")
    weights = loras / "bob" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    assert one_error(capsys, export_gguf.main(gguf_args(tiny, "--loras_dir", str(loras)))) == \
        f"error: {weights} is not a readable safetensors file: Error while deserializing header: invalid header length"
    weights.unlink()
    assert one_error(capsys, chat.main(["-m", "llama", "--models_dir", str(tiny / "models"), "--loras_dir", str(loras),
                                        "-l", "bob", "-n", "Bob", "--say", "hi"])) == \
        f"error: {loras / 'bob'} has no adapter_model.safetensors (the adapter's weights)"


# ------------------------------------------------------------- --resume from a damaged checkpoint

@pytest.mark.parametrize("damaged", ["trainer_state.json", "optimizer.pt", "rng_state.pth", "adapter_model.safetensors"])
def test_resume_from_a_damaged_checkpoint_is_one_error_line(damaged, models_dir, tiny_dataset, tmp_path, monkeypatch,
                                                          capsys):
    """A checkpoint file damaged after it completed was a traceback from inside
    Trainer (JSONDecodeError, KeyError from unpickling junk, SafetensorError)."""
    import errno

    import lora_finetune
    import peft.peft_model

    real_save = peft.peft_model.safe_save_file

    def full_at_final_write(tensors, filename, *args, **kwargs):  # the run ends with its checkpoint, no adapter
        if ".r.partial" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_at_final_write)
    args = ["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d", str(tiny_dataset),
            "-l", "r", "--max_steps", "2", "--sample_replies", "0", "--dtype", "fp32", "--eval_split", "0"]
    assert lora_finetune.main(args) == 2
    monkeypatch.setattr(peft.peft_model, "safe_save_file", real_save)
    checkpoint = tmp_path / "r" / "checkpoints" / "checkpoint-2"
    (checkpoint / damaged).write_bytes(b"junk\n")
    capsys.readouterr()
    rc = lora_finetune.main([*args, "--resume"])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"error: checkpoint {checkpoint} is damaged ({damaged}: "), err
    assert err.strip().endswith("delete that folder to resume from the one before it, or --overwrite to start over")


def test_a_memory_folder_that_is_a_file_stops_serve_at_start(tmp_path, capsys):
    """serve.py said it was serving and answered every request with a 500."""
    import serve

    (tmp_path / "afile").write_text("x")
    line = one_error(capsys, serve.main(["-m", "nowhere", "--models_dir", str(tmp_path), "-n", "Bob", "--port", "0",
                                         "--memory", "--memory_dir", str(tmp_path / "afile")]))
    assert line == f"error: cannot write to {tmp_path / 'afile'}: it is a file, not a folder"


def test_a_memory_folder_that_is_a_file_says_so(tmp_path):
    from charlora.errors import CharloraError
    from charlora.memory.store import MemoryStore

    (tmp_path / "afile").write_text("x")
    with pytest.raises(CharloraError) as err:
        MemoryStore(tmp_path / "afile" / "Bob--Alice.sqlite", "Bob", "Alice")
    assert str(err.value) == f"cannot write to {tmp_path / 'afile'}: it is a file, not a folder; give --memory_dir a folder"
    assert (tmp_path / "afile").read_text() == "x"


def test_chat_load_of_a_fifo_is_refused_not_waited_on(tmp_path):
    """/load FILE read the FIFO forever (and /load /dev/zero until memory ran out)."""
    from charlora.history import load_history
    from charlora.errors import CharloraError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CharloraError, match=r"pipe is not a regular file \(a device, pipe or socket\)"):
        load_history(fifo)
    with pytest.raises(CharloraError, match=f"^{tmp_path} is a folder$"):
        load_history(tmp_path)


def test_neftune_noise_past_floats_range_is_refused(tmp_path, capsys):
    """--neftune_noise_alpha 1e300 was a RuntimeError traceback from the noise draw at the first step."""
    assert train_error(capsys, tmp_path, "--neftune_noise_alpha", "1e300") == \
        "error: --neftune_noise_alpha must be in [0, 1000], got 1e+300"


def test_nan_in_the_base_weights_is_not_blamed_on_the_learning_rate(tiny, tiny_dataset, tmp_path, capsys):
    """Training said "lower --learning_rate" for a base model whose files hold NaN."""
    import lora_finetune

    models = damage(tiny, tmp_path, "NaN weights")
    rc = lora_finetune.main(["-m", "llama", "--models_dir", str(models), "--loras_dir", str(tmp_path / "loras"),
                             "-d", str(tiny_dataset), "--max_steps", "2", "--sample_replies", "0", "--dtype", "fp32",
                             "--eval_split", "0"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1 and err.strip().endswith(errors[0])
    assert errors[0] == ("error: the base model's weight base_model.model.model.norm.weight is not finite (NaN or "
                    "infinity): its weight files are damaged, and no --learning_rate can train on it")


def test_a_dataset_that_is_a_pipe_is_one_line_that_fits_a_dataset(tmp_path, capsys):
    """The refusal said "save the dialogue to a file" for a processed dataset too."""
    import os

    import lora_finetune

    pipe = tmp_path / "data.json"
    os.mkfifo(pipe)
    line = one_error(capsys, lora_finetune.main(["-m", "llama", "--models_dir", str(tmp_path), "-d", str(pipe)]))
    assert line == (f"error: {pipe} is not a regular file (a device, pipe or socket); save what it holds to an "
                    "ordinary file first")


# ------------------------------------------------------------- seventh session: export_gguf.py

@pytest.mark.parametrize("target", ["adapter weights", "adapter config", "base config"])
def test_gguf_onto_a_file_it_reads_is_refused_and_the_file_kept(target, tiny, tmp_path, capsys):
    """-o naming the adapter's weights or config, or the base's config.json,
    replaced that file with the GGUF and said "wrote ...", exit 0: the adapter
    (or the model) was gone."""
    import shutil

    loras, models = tmp_path / "loras", tmp_path / "models"
    shutil.copytree(tiny / "loras", loras)
    shutil.copytree(tiny / "models", models)
    path = {"adapter weights": loras / "bob" / "adapter_model.safetensors",
            "adapter config": loras / "bob" / "adapter_config.json",
            "base config": models / "llama" / "config.json"}[target]
    before = path.read_bytes()
    read = {"base config": models / "llama" / "config.json"}.get(target, path)
    line = one_error(capsys, export_gguf.main(["-l", "bob", "-m", "llama", "--models_dir", str(models),
                                               "--loras_dir", str(loras), "-o", str(path)]))
    assert line == (f"error: the output {path} is the input file {read}; writing it would destroy the input: "
                    "choose another output name")
    assert path.read_bytes() == before and not list(path.parent.glob(".*partial"))


def test_gguf_replaces_an_old_gguf_but_no_other_file(tiny, tmp_path, capsys):
    """-o dataset.txt replaced the dialogue with the GGUF, exit 0."""
    other, old = tmp_path / "dataset.txt", tmp_path / "old.gguf"
    other.write_text("Alice:Hi.\n")
    assert export_gguf.main(gguf_args(tiny, "-o", str(old))) == 0
    first = old.read_bytes()
    old.write_bytes(b"GGUF" + bytes(8))  # an older export: replaced
    assert export_gguf.main(gguf_args(tiny, "-o", str(old))) == 0
    assert old.read_bytes() == first
    capsys.readouterr()
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", str(other))))
    assert line == f"error: {other} exists and is not a GGUF file; the export replaces only those (choose another -o)"
    assert other.read_text() == "Alice:Hi.\n"


def test_gguf_of_an_adapter_whose_config_misstates_its_rank_is_refused(tiny, tmp_path, capsys):
    """r 8 in the config of rank-4 weights exported with exit 0 and twice the scale."""
    import json
    import shutil

    loras = tmp_path / "loras"
    shutil.copytree(tiny / "loras", loras)
    config = json.loads((loras / "bob" / "adapter_config.json").read_text())
    (loras / "bob" / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "--loras_dir", str(loras), "-o", str(tmp_path / "b.gguf"))))
    assert line == "error: adapter_config.json says r 8 but the weights have rank 4: the adapter is damaged"
    assert not (tmp_path / "b.gguf").exists()


def test_gguf_cleanup_on_a_read_only_disk_is_no_traceback(tiny, tmp_path, capsys, monkeypatch):
    """The cleanup of the partial file raised on a read-only file system, a
    traceback hiding the first error."""
    from pathlib import Path as P

    def refuse(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    def no_room(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    import gguf
    monkeypatch.setattr(P, "unlink", refuse)
    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", no_room)
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", str(tmp_path / "b.gguf"))))
    assert line == f"error: cannot write {tmp_path / 'b.gguf'}: No space left on device"

    def short_write(self, *args, **kwargs):  # what numpy's tofile raises on a full disk: no errno
        raise OSError("24576 requested and 1992 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", short_write)
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "-o", str(tmp_path / "b.gguf"))))
    assert line == f"error: cannot write {tmp_path / 'b.gguf'}: the disk is full? (24576 requested and 1992 written)"


def damaged_lora(tiny: Path, tmp_path: Path, how: str) -> Path:
    """A copy of loras/ whose bob has one weight damaged as `how` says."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    loras = tmp_path / "loras"
    shutil.copytree(tiny / "loras", loras)
    weights = loras / "bob" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if how == "a vector":
        tensors[key] = tensors[key].reshape(-1)
    elif how == "NaN":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    elif how == "another rank":
        tensors[key] = tensors[key][:2]
    elif how == "no LoRA keys":
        tensors = {"foo.bar": torch.zeros(3)}
    save_file(tensors, weights)
    return loras


LORA_DAMAGE = {
    "a vector": "the adapter's base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [192]; "
                "a LoRA weight is a matrix",
    "NaN": "the adapter's base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight holds NaN or infinite "
           "values: the adapter is damaged",
    "another rank": "the adapter's LoRA weights do not fit together: blk.0.attn_q.weight has lora_A of rank 2 and "
                    "lora_B of rank 4",
}


def test_an_adapter_without_lora_weights_is_refused_in_chat_and_evaluate(tiny, tmp_path, capsys):
    """PEFT only warned of the missing keys: chat.py answered with the base model
    and evaluate.py reported +0.0%, both exit 0."""
    import chat
    import evaluate

    loras = damaged_lora(tiny, tmp_path, "no LoRA keys")
    want = f"error: adapter {loras / 'bob'} holds no LoRA weights (no lora_A / lora_B in adapter_model.safetensors): it is damaged"
    common = ["-m", "llama", "--models_dir", str(tiny / "models"), "--loras_dir", str(loras), "-l", "bob", "-n", "Bob"]
    assert one_error(capsys, chat.main([*common, "--say", "hi"])) == want
    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Alice:Hi.\nBob:Hello.\n")
    assert one_error(capsys, evaluate.main([*common, "-t", str(dialogue)])) == want


@pytest.mark.parametrize("how", list(LORA_DAMAGE))
def test_a_damaged_lora_weight_is_not_exported(how, tiny, tmp_path, capsys):
    """Each was written to bob.gguf with exit 0; llama.cpp refused the file (or
    produced NaN) only when a user loaded it."""
    loras = damaged_lora(tiny, tmp_path, how)
    assert one_error(capsys, export_gguf.main(gguf_args(tiny, "--loras_dir", str(loras)))) == f"error: {LORA_DAMAGE[how]}"
    assert [p.name for p in (loras / "bob").iterdir() if "gguf" in p.name] == []


@pytest.mark.parametrize("value, shown", [("x", "'x'"), (None, "None"), (0, "0"), (2.0, "2.0")])
def test_a_base_config_with_a_bad_layer_count_is_one_error_line(value, shown, tiny, tmp_path, capsys):
    """"num_hidden_layers": "x" or missing was a ValueError / KeyError traceback."""
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny / "models", models)
    config = json.loads((models / "llama" / "config.json").read_text())
    if value is None:
        del config["num_hidden_layers"]
    else:
        config["num_hidden_layers"] = value
    (models / "llama" / "config.json").write_text(json.dumps(config))
    line = one_error(capsys, export_gguf.main(gguf_args(tiny, "--models_dir", str(models))))
    assert line == f"error: the base model's config.json needs a whole \"num_hidden_layers\" of 1 or more, got {shown}"


# ------------------------------------------------------------- seventh session: evaluate.py

HELD_OUT = "Alice:Hi.\nSir Toby:Hello.\nAlice:Bye.\nSir Toby:Farewell.\n"


def eval_args(root: Path, text: Path, *extra: str) -> list[str]:
    return ["-m", "llama", "--models_dir", str(root / "models"), "--loras_dir", str(root / "loras"), "-t", str(text),
            "--max_new_tokens", "2", "--dtype", "fp32", "--generate", "1", *extra]


@pytest.mark.parametrize("target", ["held-out text", "adapter config", "base weights"])
def test_evaluate_json_onto_a_file_it_reads_is_refused_before_the_run(target, tiny, tmp_path, capsys):
    """--json naming the held-out text (-t) or the adapter's config replaced it
    with the results, exit 0: the text, or the adapter, was gone."""
    import shutil

    shutil.copytree(tiny, tmp_path / "root")
    root = tmp_path / "root"
    text = tmp_path / "held.txt"
    text.write_text(HELD_OUT)
    path = {"held-out text": text, "adapter config": root / "loras" / "bob" / "adapter_config.json",
            "base weights": root / "models" / "llama" / "model.safetensors"}[target]
    before = path.read_bytes()
    line = one_error(capsys, evaluate_main(eval_args(root, text, "-n", "Sir Toby", "-l", "bob", "--json", str(path))))
    assert line == (f"error: the output {path} is the input file {path}; writing it would destroy the input: "
                    "choose another output name")
    assert path.read_bytes() == before


@pytest.mark.parametrize("target", ["training dataset", "adapter record", "any other file"])
def test_evaluate_json_replaces_only_an_earlier_result(target, tiny, tmp_path, capsys):
    """--json naming the adapter's training dataset, its charlora_config.json
    (which the copying score reads) or any other file replaced it, exit 0."""
    import shutil

    shutil.copytree(tiny, tmp_path / "root")
    root = tmp_path / "root"
    text = tmp_path / "held.txt"
    text.write_text(HELD_OUT)
    dataset = tmp_path / "train.json"  # what the copying score reads through the adapter's record
    dataset.write_text(json.dumps([{"input": "Alice:Hi.\nSir Toby:", "output": "Well met."}]))
    record = root / "loras" / "bob" / "charlora_config.json"
    record.write_text(json.dumps({"config": {"dataset_name": str(dataset)}}))
    path = {"training dataset": dataset,
            "adapter record": record, "any other file": tmp_path / "notes.json"}[target]
    if target == "any other file":
        path.write_text('{"mine": 1}')
    before = path.read_bytes()
    line = one_error(capsys, evaluate_main(eval_args(root, text, "-n", "Sir Toby", "-l", "bob", "--json", str(path))))
    assert line == f"error: {path} exists and is not an evaluate.py result; --json replaces only those (choose another name)"
    assert path.read_bytes() == before
    # an earlier result is replaced
    result = tmp_path / "result.json"
    assert evaluate_main(eval_args(root, text, "-n", "Sir Toby", "-l", "bob", "--json", str(result))) == 0
    assert evaluate_main(eval_args(root, text, "-n", "Sir Toby", "-l", "bob", "--json", str(result))) == 0
    written = json.loads(result.read_text())
    assert list(written) == ["reports", "summary", "settings", "environment"]
    assert written["summary"]["character_loss_change"]["sd"] is None  # one adapter: no spread (was 0.0)


def test_evaluate_seeds_with_one_missing_names_the_flag_that_trains_it(tiny, tmp_path, capsys):
    import shutil

    shutil.copytree(tiny, tmp_path / "root")
    root = tmp_path / "root"
    shutil.copytree(root / "loras" / "bob", root / "loras" / "bob-seed1")
    text = tmp_path / "held.txt"
    text.write_text(HELD_OUT)
    line = one_error(capsys, evaluate_main(eval_args(root, text, "-n", "Sir Toby", "-l", "bob", "--seeds", "2")))
    assert line.startswith(f"error: adapter {root / 'loras' / 'bob-seed2'} not found")
    assert line.endswith("; with --seeds, -d DATASET trains the seeds that are missing")


def evaluate_main(argv: list[str]) -> int:
    import evaluate

    return evaluate.main(argv)


def test_evaluate_reads_name_as_prepare_dataset_does(tiny, tmp_path, capsys):
    """`-n "Sir  Toby"` made prepare_dataset.py's samples (it cleans the name as
    its readers clean speakers) but evaluate.py said "no line by 'Sir  Toby'";
    `-n " "` said "no line by ' '"."""
    text = tmp_path / "held.txt"
    text.write_text(HELD_OUT)
    assert evaluate_main(eval_args(tiny, text, "-n", " Sir  Toby ", "--examples", "0")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("base ")
    assert one_error(capsys, evaluate_main(eval_args(tiny, text, "-n", " \t"))) == \
        "error: --name needs a character's name, got ' \\t'"


def test_an_output_that_is_a_pipe_through_proc_is_refused():
    """/dev/stdout on a pipe resolves to /proc/<pid>/fd/pipe:[N], a name that
    does not exist: evaluate.py --json /dev/stdout | jq ran the whole evaluation
    and then failed with "No such file or directory"."""
    from charlora.errors import CharloraError
    from charlora.files import output_target

    read, write = os.pipe()
    try:
        with pytest.raises(CharloraError, match=r"it is not a regular file \(a pipe, device or socket\)"):
            output_target(f"/proc/self/fd/{write}")
    finally:
        os.close(read)
        os.close(write)


# ------------------------------------------------------------- seventh session: chat.py

class Stdin:
    """Piped lines for chat.py; `before(n)` runs as the n-th line (0-based) is read."""

    def __init__(self, lines: list[str], before=None):
        self.lines, self.before, self.n = list(lines), before, 0

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        if self.before is not None:
            self.before(self.n)
        self.n += 1
        return self.lines.pop(0) + "\n" if self.lines else ""


def chat_pipe(tiny: Path, capsys, monkeypatch, lines: list[str], *extra: str, before=None) -> tuple[int, str, str]:
    import chat

    monkeypatch.setattr("sys.stdin", Stdin(lines, before))
    rc = chat.main(["-m", "llama", "--models_dir", str(tiny / "models"), "--loras_dir", str(tiny / "loras"), "-l", "bob",
                    "-n", "Bob", "-u", "Alice", "--max_new_tokens", "4", "--greedy", "--dtype", "fp32", "--json", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_piped_chat_skips_a_line_of_escapes_and_stops_at_a_mistake(tiny, capsys, monkeypatch):
    """From a pipe a mistake was logged and the chat went on with exit 0: a
    script saw status 0 and one reply fewer than its lines, every later reply
    on the wrong line.  A line of escape sequences alone, which shows nothing,
    was such a mistake ("nothing to say"); it is skipped like a blank line, as is
    one of zero-width characters alone (it was said and answered)."""
    rc, out, err = chat_pipe(tiny, capsys, monkeypatch, ["\x1b[2J\x1b]0;t\x07\x01", "\u200b\u2060", "Hello",
                                                         "a" * 200_000, "More"])
    assert rc == 2
    assert [json.loads(row)["user"] for row in out.splitlines()] == ["Hello"]
    assert err.strip().splitlines()[-1] == ("error: that line is too long for this model: with --max_new_tokens 4 "
                                            "a prompt may have at most 508 tokens")
    assert "nothing to say" not in err
    rc, out, err = chat_pipe(tiny, capsys, monkeypatch, ["/bogus", "Hello"])
    assert (rc, out) == (2, "")
    assert err.strip().splitlines()[-1].startswith("error: unknown command /bogus; commands: /reset")


@pytest.mark.parametrize("content, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply to read"),
    ('[{"speaker": "A", "text": "x"}, ' + "1" * 5000 + "]",
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"),
])
def test_load_of_pathological_json_is_one_error(content, problem, tmp_path):
    """A RecursionError or ValueError traceback ended the chat."""
    from charlora.history import load_history
    from charlora.errors import CharloraError

    path = tmp_path / "h.json"
    path.write_text(content)
    with pytest.raises(CharloraError) as info:
        load_history(path)
    assert str(info.value) == f"{path} is not valid JSON ({problem})"


def memory_session(tiny_llama, tiny_tokenizers, tmp_path, **settings):
    """Bob talking with Alice, memory in tmp_path/memory; replies are "Aye." without the model."""
    from charlora.chat import ChatSession, Settings
    from charlora.memory import ChatMemory, MemorySettings

    s = ChatSession(tiny_llama, tiny_tokenizers["llama-like"], Settings("Bob", "Alice", rounds=2, max_new_tokens=3))
    s.memory = ChatMemory.open(MemorySettings(memory_dir=tmp_path / "memory", **settings), "Bob", "Alice",
                               count_tokens=s.count_tokens)
    s.generate = lambda prompt, stream=None: ("Aye.", "eos")
    return s


def test_forget_and_remember_with_hostile_arguments(tiny_llama, tiny_tokenizers, tmp_path):
    """/forget t<30 digits> was an OverflowError traceback (past SQLite's
    integers); /remember kept escape sequences as a fact, and a 200,000-character
    fact that, as the newest, pushed every older fact out of the prompt."""
    from charlora.chat import handle_command
    from charlora.errors import CharloraError

    s = memory_session(tiny_llama, tiny_tokenizers, tmp_path)
    log: list[str] = []
    with pytest.raises(CharloraError, match=f"^no item t{'9' * 30} in this memory$"):
        handle_command(s, f"/forget t{'9' * 30}", log.append)
    handle_command(s, "/remember my dog is called Rex", log.append)
    with pytest.raises(CharloraError, match=r"^/remember needs a fact, e.g. /remember my sister is called Ana$"):
        handle_command(s, "/remember \x1b[31m\x07", log.append)
    with pytest.raises(CharloraError, match=r"^that fact is \d+ tokens with its heading, more than --facts_tokens 64 "
                                            "lets into the prompt; say it shorter$"):
        handle_command(s, "/remember " + "x" * 200_000, log.append)
    assert log == ["(remembered as f1)"]
    assert [f.text for f in s.memory.store.facts()] == ["my dog is called Rex"]
    s.say("Hello")
    assert "(What Alice has told Bob: my dog is called Rex)" in s.prompt()


def test_a_memory_file_that_refuses_writes_is_one_error_and_keeps_step(tiny_llama, tiny_tokenizers, tmp_path):
    """A read-only (or full) memory file was an sqlite3.OperationalError
    traceback that ended the chat; the line was in the conversation but not in
    the file, so /forget and the summary's turn ids pointed at the wrong lines."""
    from charlora.errors import CharloraError

    s = memory_session(tiny_llama, tiny_tokenizers, tmp_path)
    s.say("Hello")
    s.memory.store.db.execute("PRAGMA query_only = ON")  # writes fail as on a read-only file
    path = tmp_path / "memory" / "Bob--Alice.sqlite"
    with pytest.raises(CharloraError) as info:
        s.say("Are you there?")
    assert str(info.value) == (f"cannot write memory file {path} (attempt to write a readonly database); "
                               "this was not remembered")
    with pytest.raises(CharloraError, match="attempt to write a readonly database"):
        s.reset()
    assert [l.text for l in s.history] == ["Hello", "Aye."] and len(s.memory.ids) == 2
    s.memory.store.db.execute("PRAGMA query_only = OFF")
    s.say("Now?")
    assert [t.text for t in s.memory.store.turns()] == ["Hello", "Aye.", "Now?", "Aye."]
    assert s.memory.ids == [t.id for t in s.memory.store.turns()]


def test_a_memory_folder_deleted_mid_chat_ends_a_piped_chat(tiny, tmp_path, capsys, monkeypatch):
    """SQLite kept writing into the deleted file: every later turn went
    nowhere, without a word, exit 0."""
    import shutil

    memory = tmp_path / "memory"

    def delete(n: int) -> None:
        if n == 1:
            shutil.rmtree(memory)

    rc, out, err = chat_pipe(tiny, capsys, monkeypatch, ["Hello", "Still there?"], "--memory_dir", str(memory),
                             "--embedder", "none", "--summarizer", "extractive", before=delete)
    assert rc == 2 and [json.loads(row)["user"] for row in out.splitlines()] == ["Hello"]
    assert err.strip().splitlines()[-1] == (
        f"error: memory file {memory / 'Bob--Alice.sqlite'} was deleted or replaced during this chat; nothing more "
        "can be remembered in it (/save FILE keeps the conversation; start chat.py again for a new memory file)")


def test_evaluate_says_not_measured_instead_of_nan(tiny, tmp_path, capsys):
    """A held-out text where only the character speaks (or --others 0,
    --generate 0) printed "other speakers: +nan%; specificity +nan pt ...
    attribution AUC nan" in the summary."""
    text = tmp_path / "held.txt"
    text.write_text("Bob:Hello.\nBob:Again.\n")
    assert evaluate_main(eval_args(tiny, text, "-n", "Bob", "-l", "bob", "--generate", "0", "--examples", "0")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3:] == ["character loss change: +0.0%; other speakers: not measured; specificity not measured "
                       "(text tokens alone not measured); attribution AUC not measured",
                       "clean endings not measured; replies repeating a 4-gram not measured; sharing an 8-gram with "
                       "training not measured"]


def test_two_chats_on_one_session_are_refused_but_other_sessions_share_the_file(tmp_path):
    """Two chats with the same --session both wrote into it, each blind to the
    other's lines: the session became two conversations shuffled together.
    A child process holds the session here, as a second chat.py would (locks
    of one process never exclude each other)."""
    import subprocess
    import sys

    from charlora.errors import CharloraError
    from charlora.memory import MemoryStore

    path = tmp_path / "Bob--Alice.sqlite"
    MemoryStore(path, "Bob", "Alice").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "from charlora.memory import MemoryStore; "
         f"s = MemoryStore({str(path)!r}, 'Bob', 'Alice'); s.session('evening'); print('held', flush=True); "
         "input(); s.session(None); print('reset', flush=True); input()"],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        store = MemoryStore(path, "Bob", "Alice")
        with pytest.raises(CharloraError) as info:
            store.session("evening")
        assert str(info.value) == (f"session 'evening' is open in another chat on {path}; leave that chat first, "
                                   "or give another --session")
        assert store.session("morning")[1:] == ("morning", False)  # another session of the same file: fine
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "reset\n"  # /reset lets go of the session it left
        assert store.session("evening")[1:] == ("evening", True)
        store.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_fact_too_long_for_the_budget_does_not_hide_the_older_ones(tmp_path):
    """A fact found in what the user said (up to 200 characters) that is over
    --facts_tokens alone stopped the walk from the newest fact back: no fact
    reached any prompt again."""
    from charlora.memory import ChatMemory, MemorySettings

    words = lambda text: len(text.split())  # one token a word
    mem = ChatMemory.open(MemorySettings(memory_dir=tmp_path, facts_tokens=12), "Bob", "Alice", count_tokens=words)
    mem.store.add_fact("My dog is called Rex.")
    mem.store.add_fact("My favourite " + "very " * 30 + "long word is this one.")
    items = mem.items("", [])
    assert [(i.ref, i.line.text) for i in items] == [("f1", "(What Alice has told Bob: My dog is called Rex.)")]
    mem.store.close()

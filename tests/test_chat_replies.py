"""One reply generator: chat.py --greedy, evaluate.py and the replies printed
after training say the same thing for the same prompt and settings; the
loader every script shares; the configs' refusals and the CLI's exit."""
from __future__ import annotations

import json

import math

import pytest

import chat
import evaluate
from charlora import cli
from charlora.adapter import load_with_adapters
from charlora.config import ChatConfig, EvalConfig, check_config, chat_settings
from charlora.errors import CharloraError
from charlora.evaluate import greedy_replies
from charlora.prompt import prompt_speakers
from charlora.reply import Sampling, generate_replies, sample_reply
from conftest import save_tiny_model

SAME = {"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": 80}  # what evaluation and training use


@pytest.fixture(scope="module")
def adapted(chat_models):
    """The base llama with adapter t, loaded as chat.py loads it."""
    models, loras, _ = chat_models
    cfg = ChatConfig(model_name="llama", models_dir=str(models), loras_dir=str(loras), dtype="fp32",
                     quantization="none")
    model, tokenizer, what = load_with_adapters(cfg, ["t"], None, log=print)
    assert what == "llama + t on cpu, float32, quantization none"
    return model, tokenizer


def test_chat_evaluate_and_training_say_the_same(chat_models, adapted):
    from charlora.chat import ChatSession
    from charlora.dialogue import parse_dialogue

    model, tokenizer = adapted
    trained_samples = chat_models[2]
    assert len(trained_samples) == 2
    for prompt, trained_reply, trained_eos in trained_samples:
        name, speakers = prompt_speakers(prompt)
        assert (name, speakers) == ("Bob", ["Alice", "Bob"])
        session = ChatSession(model, tokenizer, chat_settings("Bob", "Alice", rounds=50, **SAME))
        session.history = parse_dialogue(prompt[: -len("\nBob:")])
        assert session.prompt() == prompt
        chat_reply = session.generate(prompt)
        [measured] = greedy_replies(model, tokenizer, [{"input": prompt, "output": "?"}], "Bob", ["Alice", "Bob"])
        assert trained_reply  # something to compare, not an empty reply
        assert chat_reply == (trained_reply, "eos" if trained_eos else chat_reply[1])
        assert measured.reply == trained_reply and measured.ended_by_eos == trained_eos
        assert sample_reply(model, tokenizer, prompt) == (trained_reply, trained_eos)


def test_batched_replies_equal_one_at_a_time_with_and_without_stops(adapted, tiny_dataset):
    import json

    model, tokenizer = adapted
    prompts = [s["input"] for s in json.loads(tiny_dataset.read_text())[:5]] + ["Bob:", "Alice:Apples?\nBob:"]
    single = [generate_replies(model, tokenizer, [p], "Bob", ["Alice"], Sampling(max_new_tokens=20))[0]
              for p in prompts]
    for stop in (True, False):
        batched = generate_replies(model, tokenizer, prompts, "Bob", ["Alice"], Sampling(max_new_tokens=20),
                                   stop=stop, batch_size=4)
        assert [(g.reply, g.ended_by) for g in batched] == [(g.reply, g.ended_by) for g in single]
    assert tokenizer.padding_side == "right"  # restored


# ------------------------------------------------------------- the loader


def one_error_line(capsys, main, argv) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


def test_every_script_refuses_pickle_weights_unless_allowed(tmp_path, tiny_tokenizers, tiny_dataset, capsys):
    import torch
    from safetensors.torch import load_file

    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    capsys.readouterr()
    text = tmp_path / "held_out.txt"
    text.write_text("Alice:Hi.\nBob:Hello.\nAlice:Apples?\nBob:Two.\n")
    flags = ["-m", "llama", "--models_dir", str(tmp_path / "models"), "-n", "Bob", "--dtype", "fp32"]
    refusal = (f"error: {folder} has only pickle weights (pytorch_model.bin), which can run code when loaded; "
               "convert them to safetensors, or pass --allow_pickle if you trust their source")
    assert one_error_line(capsys, chat.main, [*flags, "-u", "Alice", "--say", "Hi"]) == refusal
    eval_flags = [*flags, "-t", str(text), "--generate", "1", "--max_new_tokens", "2", "--others", "0"]
    assert one_error_line(capsys, evaluate.main, eval_flags) == refusal
    assert chat.main([*flags, "-u", "Alice", "--say", "Hi", "--allow_pickle", "--max_new_tokens", "2"]) == 0
    out = tmp_path / "eval.json"
    assert evaluate.main([*eval_flags, "--allow_pickle", "--json", str(out)]) == 0
    # A bar per model scored (the base and 3 seeds ran 15 minutes without a word): Bob's 2 lines, 1 reply.
    bar = [part for part in capsys.readouterr().err.replace("\n", "\r").split("\r") if part.startswith("scoring base")]
    assert bar[-1].startswith("scoring base: 100%") and " 3/3 " in bar[-1], bar
    base = json.loads(out.read_text())["reports"][0]
    # Bob's 2 held-out lines, "Hello." and "Two.": the loss split into words and ends recomposes the loss
    split = base["split_losses"]
    assert split["others_text"] is None and split["others_eos"] is None  # --others 0: none scored (strict JSON)
    tok = tiny_tokenizers["llama-like"]
    text_tokens = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in ("Hello.", "Two."))
    assert (split["character_text"] * text_tokens + 2 * split["character_eos"]) / (text_tokens + 2) == \
        pytest.approx(base["character_loss"], rel=1e-6)


def test_a_tokenizer_from_another_model_is_refused(tmp_path, tiny_tokenizers, capsys):
    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    bigger = tiny_tokenizers["llama-like"].__class__.from_pretrained(folder)
    bigger.add_tokens([f"extra{i}" for i in range(5)])
    bigger.save_pretrained(folder)
    capsys.readouterr()
    msg = one_error_line(capsys, chat.main, ["-m", "llama", "--models_dir", str(tmp_path / "models"), "-n", "Bob",
                                             "--say", "Hi"])
    assert msg == (f"error: the tokenizer in {folder} has {len(bigger)} tokens but the model has {len(bigger) - 5} "
                   "embeddings: tokenizer and weights come from different models")


# ------------------------------------------------------------- configs


@pytest.mark.parametrize("changes, message", [
    ({"rounds": -1}, "--rounds must be 0 or more, got -1"),
    ({"sampling": Sampling(max_new_tokens=0)}, "--max_new_tokens must be at least 1, got 0"),
    ({"sampling": Sampling(temperature=math.nan)}, "--temperature must be 0 or more, got nan"),
    ({"sampling": Sampling(top_p=0.0)}, "--top_p must be in (0, 1], got 0.0"),
    ({"sampling": Sampling(top_p=math.inf)}, "--top_p must be in (0, 1], got inf"),
    ({"sampling": Sampling(repetition_penalty=0.0)}, "--repetition_penalty must be positive, got 0.0"),
    ({"sampling": Sampling(no_repeat_ngram_size=-2)}, "--no_repeat_ngram_size must be 0 or more, got -2"),
    ({"pcw": -1}, "--pcw must be in [0, 1000], got -1"),
    ({"lora_scale": [1.0, math.nan]}, "--lora_scale must be a finite number, got nan"),
    ({"recall_threshold": 1.5}, "--recall_threshold must be in [0, 1], got 1.5"),
    ({"recall_k": -1}, "--recall_k must be 0 or more, got -1"),
    ({"session": "  "}, "--session needs a name"),
    ({"user": "Bob"}, "--user and --name are both 'Bob': the user needs a name of their own"),
    ({"user": "9lives"}, "--user '9lives' cannot be a speaker name in the `Name:line` format "
                         "(a letter first, then up to 39 letters, digits, spaces or . ' - _)"),
    ({"say": " \n "}, "--say needs some text"),
])
def test_check_config_refuses_bad_chat_flags(changes, message):
    with pytest.raises(CharloraError) as exc:
        check_config(ChatConfig(model_name="m", name="Bob", **changes))
    assert str(exc.value) == message


@pytest.mark.parametrize("changes, message", [
    ({"cutoff_len": 1}, "--cutoff_len must be at least 8, got 1"),
    ({"generate": -1}, "--generate must be 0 or more, got -1"),
    ({"batch_size": 0}, "--batch_size must be at least 1, got 0"),
    ({"sampling": Sampling(max_new_tokens=0)}, "--max_new_tokens must be at least 1, got 0"),
    ({"sampling": Sampling(repetition_penalty=math.nan)}, "--repetition_penalty must be positive, got nan"),
])
def test_check_config_refuses_bad_evaluate_flags(changes, message):
    with pytest.raises(CharloraError) as exc:
        check_config(EvalConfig(model_name="m", name="Bob", txtfilename="t", **changes))
    assert str(exc.value) == message


def test_check_config_normalizes_names_and_keeps_the_rest():
    cfg = check_config(ChatConfig(model_name="m", name="  Sir   Toby ", user="Maria", session=" evening "))
    assert (cfg.name, cfg.user, cfg.session) == ("Sir Toby", "Maria", "evening")
    assert cfg.sampling == Sampling(max_new_tokens=120, greedy=False, temperature=0.7, top_p=0.9,
                                    repetition_penalty=1.1)


def test_flags_become_configs_with_one_set_of_defaults():
    args = chat.make_parser().parse_args(["-m", "m", "-n", "Bob", "--greedy", "--top_p", "0.5"])
    cfg = chat.from_args(ChatConfig, args)
    assert cfg == ChatConfig(model_name="m", name="Bob",
                             sampling=Sampling(max_new_tokens=120, greedy=True, temperature=0.7, top_p=0.5,
                                               repetition_penalty=1.1))
    args = evaluate.make_parser().parse_args(["-m", "m", "-n", "Bob", "-t", "x.txt", "--quantization", "8bit"])
    assert evaluate.from_args(EvalConfig, args) == EvalConfig(model_name="m", name="Bob", txtfilename="x.txt",
                                                              quantization="8bit")


@pytest.mark.parametrize("raised, status, line", [
    (CharloraError("no such file"), 2, "error: no such file"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_cli_turns_errors_into_one_line(raised, status, line, capsys):
    def fail():
        raise raised

    assert cli.run(fail) == status
    assert capsys.readouterr().err.strip() == line


def test_cli_gives_a_named_error_its_own_prefix_and_status(capsys):
    from charlora.checkpoints import Interrupted

    def stopped():
        raise Interrupted("saved checkpoint-3")

    assert cli.run(stopped, errors={Interrupted: ("interrupted", 130)}) == 130
    assert capsys.readouterr().err == "interrupted: saved checkpoint-3\n"

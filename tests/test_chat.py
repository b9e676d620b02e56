"""chat.py: stop rules, prompts from history, context trimming, /save and /load,
adapter checks, and replies through chat.main on a tiny llama + tiny adapter."""
from __future__ import annotations

import io
import json

import pytest

import chat
from charlora.chat import ChatSession, handle_command
from charlora.history import load_history
from charlora.dialogue import Line
from charlora.errors import CharloraError, OutputFailed
from charlora.prompt import build_prompt, fit_context
from charlora.reply import ReplyStreamer, cut_reply, stream_safe
from conftest import chat_history, chat_session

ASK = "Good morning, Bob. How many apples today?"

# ------------------------------------------------------------- stop rules


@pytest.mark.parametrize(
    "text, eos, expected",
    [
        ("I have two apples.", True, ("I have two apples.", "eos")),
        (" I have two", False, ("I have two", "length")),
        ("Yes, sir.\nAlice:No", False, ("Yes, sir.", "newline")),
        ("Yes, sir. \r\nmore", True, ("Yes, sir.", "newline")),
        ("Yes.\rmore", False, ("Yes.", "newline")),
        ("Sure. Alice: no", False, ("Sure.", "speaker")),
        ("Sure. Alice : no", False, ("Sure.", "speaker")),
        ("Sure.Alice:no", False, ("Sure.", "speaker")),
        ("Aye\uff1a Sir Toby\uff1a no", False, ("Aye\uff1a", "speaker")),
        ("Alice:Hello", False, ("", "speaker")),
        ("Fine. Alice: x\nBob: y", False, ("Fine.", "speaker")),
        ("Fine.\nAlice: x", True, ("Fine.", "newline")),
        ("\nHello", False, ("", "newline")),
        # Not a stop: a name glued to a word, an unknown name, the character's own name.
        ("Malice: a word", True, ("Malice: a word", "eos")),
        ("Note: the apples", True, ("Note: the apples", "eos")),
        ("I am Bob: the baker", True, ("I am Bob: the baker", "eos")),
        # What shows is what is kept and checked: escapes and controls go first.
        ("Hi \x1b[31mthere\x1b[0m\x07!", True, ("Hi there!", "eos")),
        ("Fine. Ali\x00ce: no", True, ("Fine.", "speaker")),
        ("a\tb\u2028c\x0bd", False, ("a b c d", "length")),
        ("Done.\x1b]0;title\x07\nAlice: x", True, ("Done.", "newline")),
    ],
)
def test_cut_reply(text, eos, expected):
    assert cut_reply(text, "Bob", ["Alice", "Bob", "Sir Toby"], eos=eos) == expected


@pytest.mark.parametrize(
    "partial, shown",
    [
        (" Hello wor", "Hello wor"),
        ("Hello ", "Hello"),
        ("caf\ufffd", "caf"),  # half a UTF-8 character
        ("Sure. A", "Sure."),
        ("Sure. Alic", "Sure."),
        ("Sure. Alice ", "Sure."),
        ("Sure. Alice: no", "Sure."),
        ("Sure.\nmore", "Sure."),
        ("Malic", "Malic"),  # glued to a word: cannot become a stop
        ("I have Bo", "I have Bo"),  # the character's own name is no stop
    ],
)
def test_stream_safe_holds_back_what_may_become_a_stop(partial, shown):
    assert stream_safe(partial, "Bob", ["Alice"]) == shown


@pytest.mark.parametrize("full", ["Sure. Alice: no", "Well, Alice said so.\nAlice:x", " One two  three ", "Ali",
                                  "Hi \x1b[31mthere\x1b[0m. Ali\x07ce: x", "a\x1b]0;t\x07b\tc\u2028d \x1bMe",
                                  "\x9b1mX\x00Y Alice\t: z"])
def test_streamed_text_is_always_a_prefix_of_the_final_reply(full):
    final, _ = cut_reply(full, "Bob", ["Alice"])
    for i in range(len(full) + 1):
        assert final.startswith(stream_safe(full[:i], "Bob", ["Alice"])), full[:i]


def test_streamer_prints_up_to_the_cut(tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    ids = tok("Sure, my lady. Alice:no\nAlice:", add_special_tokens=False)["input_ids"]
    import torch

    out = io.StringIO()
    streamer = ReplyStreamer(tok, "Bob", ["Alice"], out)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.finish("Sure, my lady.")
    assert out.getvalue() == "Sure, my lady.\n"



def test_a_generated_escape_never_reaches_the_reply_or_the_stream(tiny_tokenizers):
    # What finish returns is what chat keeps in memory and history and the server sends.
    from charlora.reply import finish
    import torch

    tok = tiny_tokenizers["gpt2-like"]
    raw = "Aye,\x1b[2J\x1b]0;pwned\x07 sir.\x07"
    ids = tok(raw, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == raw  # byte-level: the model can write any of it
    assert finish(tok, ids + [tok.eos_token_id], "Bob", ["Alice"]).reply == "Aye, sir."
    out = io.StringIO()
    streamer = ReplyStreamer(tok, "Bob", ["Alice"], out)
    streamer.put(torch.tensor([[1, 2, 3]]))
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.finish("Aye, sir.")
    assert out.getvalue() == "Aye, sir.\n"


# ------------------------------------------------------ prompts and history

HISTORY = chat_history()


def session(tiny_llama, tiny_tokenizers, **kw) -> ChatSession:
    return chat_session(tiny_llama, tiny_tokenizers["llama-like"], **kw)


def test_prompt_is_build_prompt_over_the_last_rounds_lines(tiny_llama, tiny_tokenizers):
    s = session(tiny_llama, tiny_tokenizers, rounds=5)
    assert s.prompt() == build_prompt(HISTORY[-5:], "Bob")
    assert s.prompt() == "(Enter Carol)\nCarol:What news?\nAlice:How many apples?\nBob:Two.\nAlice:Only two?\nBob:"
    assert session(tiny_llama, tiny_tokenizers, rounds=0).prompt() == "Bob:"
    assert session(tiny_llama, tiny_tokenizers, rounds=50).prompt() == build_prompt(HISTORY, "Bob")


def test_fit_context_drops_oldest_lines_first():
    count = len  # one "token" per character
    assert fit_context(HISTORY, "Bob", 5, count, None) == HISTORY[-5:]
    # "Bob:Two.\nAlice:Only two?\nBob:" is 29 characters; one line more is 52.
    assert fit_context(HISTORY, "Bob", 5, count, 29) == HISTORY[-2:]
    assert fit_context(HISTORY, "Bob", 5, count, 51) == HISTORY[-2:]
    assert fit_context(HISTORY, "Bob", 5, count, 52) == HISTORY[-3:]
    assert fit_context(HISTORY, "Bob", 5, count, 3) == []


def test_session_prompt_fits_the_model_context(tiny_llama, tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    n_tokens = lambda lines: len(tok(build_prompt(lines, "Bob"))["input_ids"])
    # The tiny llama reads 512 positions; leave room for the newest 3 lines only.
    budget = n_tokens(HISTORY[-3:])
    assert n_tokens(HISTORY[-4:]) > budget
    s = session(tiny_llama, tiny_tokenizers, rounds=5, max_new_tokens=512 - budget)
    assert s.budget == budget
    assert s.prompt() == build_prompt(HISTORY[-3:], "Bob")
    assert len(tok(s.prompt())["input_ids"]) <= budget
    # A line that cannot fit at all is refused, not silently dropped.
    with pytest.raises(CharloraError, match=f"at most {budget} tokens"):
        s.say("apples " * 200)
    assert s.history == HISTORY


def test_save_then_load_round_trips(tiny_llama, tiny_tokenizers, tmp_path):
    s = session(tiny_llama, tiny_tokenizers)
    s.history.append(Line("Alice", "Caf\u00e9 \u00e0 la cr\u00e8me?"))
    saved = list(s.history)
    log = []
    path = tmp_path / "chat.json"
    handle_command(s, f"/save {path}", log.append)
    assert json.loads(path.read_text(encoding="utf-8"))[:3] == [
        {"speaker": "Alice", "text": "Hi."}, {"speaker": "Bob", "text": "Hello, Alice."},
        {"speaker": None, "text": "(Enter Carol)"}]
    handle_command(s, "/reset", log.append)
    assert s.history == []
    handle_command(s, f"/load {path}", log.append)
    assert s.history == saved
    assert log == [f"(saved 8 lines to {path})", "(conversation cleared)", f"(loaded 8 lines from {path})"]


def test_save_replaces_a_saved_conversation_and_nothing_else(tiny_llama, tiny_tokenizers, tmp_path):
    s = session(tiny_llama, tiny_tokenizers)
    old = tmp_path / "old.json"
    old.write_text('[{"speaker": "Alice", "text": "Bye."}]', encoding="utf-8")
    handle_command(s, f"/save {old}", lambda _: None)
    assert len(json.loads(old.read_text(encoding="utf-8"))) == len(s.history) == 7
    memory = tmp_path / "Bob--Alice.sqlite"
    memory.write_bytes(b"SQLite format 3\x00" + bytes(100))  # the open memory file, a dialogue, a config...
    with pytest.raises(CharloraError, match="exists and is not a saved conversation"):
        handle_command(s, f"/save {memory}", lambda _: None)
    assert memory.read_bytes() == b"SQLite format 3\x00" + bytes(100)


@pytest.mark.parametrize("content, message", [
    ("{}", "must be a JSON list"),
    ('[{"speaker": "Alice"}]', "entry 0 is not an object"),
    ('[{"speaker": 3, "text": "x"}]', "entry 0 is not an object"),
    ("[", "is not valid JSON"),
])
def test_load_refuses_bad_files(content, message, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CharloraError, match=message):
        load_history(bad)
    with pytest.raises(CharloraError, match="not found"):
        load_history(tmp_path / "nope.json")


# --------------------------------------------------- through chat.main


@pytest.fixture(scope="module")
def trained(chat_models):
    """models/{llama, llama_wide} and loras/t (conftest.chat_models)."""
    return chat_models[:2]


def chat_args(trained, *extra, model="llama"):
    models, loras = trained
    return ["-m", model, "--models_dir", str(models), "--loras_dir", str(loras), "-n", "Bob", "-u", "Alice",
            "--dtype", "fp32", "--quantization", "none", *extra]


def run_chat(capsys, argv, stdin_text=None, monkeypatch=None):
    if stdin_text is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin_text))
    rc = chat.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def reference_reply(trained, prompt):
    """What plain greedy generate (no stop criteria) gives, cut afterwards."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models, loras = trained
    tok = AutoTokenizer.from_pretrained(models / "llama")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models / "llama"), loras / "t").eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**enc, max_new_tokens=120, do_sample=False, repetition_penalty=1.1,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    new = ids[0, enc["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id in new
    new = new[: new.index(tok.eos_token_id)] if eos else new
    return cut_reply(tok.decode(new, skip_special_tokens=True), "Bob", ["Alice"], eos)


def test_say_prints_one_reply(trained, capsys):
    rc, out, err = run_chat(capsys, chat_args(trained, "-l", "t", "--say", ASK, "--greedy", "--json"))
    assert rc == 0, err
    assert out.count("\n") == 1
    result = json.loads(out)
    assert set(result) == {"user", "reply", "ended_by"}
    assert result["user"] == ASK
    reply = result["reply"]
    assert "\n" not in reply and "Alice:" not in reply
    # The adapter learned Bob's line and where it ends.
    assert reply.startswith("I have ") and reply.endswith("for you, Alice.")
    assert result["ended_by"] == "eos"
    # Exactly what plain greedy generation gives on the same build_prompt prompt.
    assert (reply, "eos") == reference_reply(trained, build_prompt([Line("Alice", ASK)], "Bob"))

    rc, out, err = run_chat(capsys, chat_args(trained, "-l", "t", "--say", ASK, "--greedy"))
    assert rc == 0, err
    assert out == reply + "\n"


def test_stdin_turns_give_one_json_line_each(trained, capsys, monkeypatch):
    rc, out, err = run_chat(capsys, chat_args(trained, "-l", "t", "--json", "--greedy"),
                            f"{ASK}\n\n   \nAnd tomorrow?\n", monkeypatch)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["user"] for r in rows] == [ASK, "And tomorrow?"]
    # Each turn's prompt is the conversation so far, as plain generate continues it.
    said = [Line("Alice", ASK)]
    for r in rows:
        assert set(r) == {"user", "reply", "ended_by"}
        assert (r["reply"], r["ended_by"]) == reference_reply(trained, build_prompt(said, "Bob"))
        said += [Line("Bob", r["reply"])] * bool(r["reply"]) + [Line("Alice", "And tomorrow?")]  # an empty reply is not kept


def test_the_same_seed_samples_the_same_replies(trained, capsys, monkeypatch):
    def replies():
        rc, out, err = run_chat(capsys, chat_args(trained, "-l", "t", "--json", "--seed", "3", "--temperature", "1.5"),
                                f"{ASK}\nAnd tomorrow?\n", monkeypatch)
        assert rc == 0, err
        return out

    first = replies()
    assert first == replies()
    assert len(first.splitlines()) == 2


def test_two_half_scaled_copies_equal_one_adapter_and_scale_zero_is_base(trained, capsys):
    def reply(*flags):
        rc, out, err = run_chat(capsys, chat_args(trained, *flags, "--say", ASK, "--greedy", "--json"))
        assert rc == 0, err
        return json.loads(out)["reply"]

    one = reply("-l", "t")
    assert reply("-l", "t", "t", "--lora_scale", "0.5") == one
    assert reply("-l", "t", "--lora_scale", "0") == reply()
    assert reply() != one


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_interactive_streams_the_reply_and_obeys_commands(trained, tmp_path):
    saved = tmp_path / "h.json"
    stdin, stdout, stderr = FakeTTY(f"{ASK}\n\n/save {saved}\n/reset\n/bogus\n/quit\n"), FakeTTY(), io.StringIO()
    from charlora.chat import run

    args = chat.make_parser().parse_args(chat_args(trained, "-l", "t", "--greedy"))
    assert run(args, stdin, stdout, stderr) == 0
    history = json.loads(saved.read_text())
    assert history[0] == {"speaker": "Alice", "text": ASK}
    reply = history[1]["text"]
    assert history == [{"speaker": "Alice", "text": ASK}, {"speaker": "Bob", "text": reply}]
    # The user prompt, then Bob's streamed reply; an empty line asks again.
    assert stdout.getvalue() == f"Alice: Bob: {reply}\n" + "Alice: " * 5
    log = stderr.getvalue().splitlines()
    assert log[-4:] == [f"(saved 2 lines to {saved})", "(conversation cleared)",
                        "error: unknown command /bogus; commands: /reset, /save FILE, /load FILE, /quit "
                        "(start a line with // to say something starting with /)", "(bye)"]


# ------------------------------------------------------------ bad input


def one_error_line(capsys, argv) -> str:
    rc, out, err = run_chat(capsys, argv)
    assert rc == 2, (out, err)
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_adapter_for_another_model_size_is_refused(trained, capsys):
    models, loras = trained
    msg = one_error_line(capsys, chat_args(trained, "-l", "t", "--say", ASK, model="llama_wide"))
    assert msg == (f"error: adapter {loras / 't'} was trained for a model with hidden size 48, "
                   "this one (llama_wide) has 64 (it was trained on llama)")


def test_missing_model_and_adapter(trained, capsys):
    models, loras = trained
    msg = one_error_line(capsys, chat_args(trained, "--say", ASK, model="nope"))
    assert msg.startswith(f"error: model 'nope' not found; models in {models}/: llama, llama_wide;")
    msg = one_error_line(capsys, chat_args(trained, "-l", "gone", "--say", ASK))
    assert msg == f"error: adapter {loras / 'gone'} not found (no adapter_config.json); adapters in {loras}/: t"
    msg = one_error_line(capsys, chat_args(trained, "-l", "t", "--lora_scale", "1", "2", "--say", ASK))
    assert msg == "error: --lora_scale takes one factor for all adapters or one per adapter (1), got 2"


@pytest.mark.parametrize("flags, message", [
    (["--say", "  "], "error: --say needs some text"),
    (["--user", "Bob", "--say", "x"], "error: --user and --name are both 'Bob': the user needs a name of their own"),
    (["--rounds", "-1", "--say", "x"], "error: --rounds must be 0 or more, got -1"),
])
def test_bad_flags(flags, message, trained, capsys):
    assert one_error_line(capsys, chat_args(trained, *flags)) == message


def test_reply_stop_criterion(tiny_tokenizers):
    import torch

    from charlora.reply import ReplyStop

    tok = tiny_tokenizers["llama-like"]
    prompt = tok("Alice:Hi\nBob:")["input_ids"]
    stop = ReplyStop(tok, len(prompt), "Bob", ["Alice"])

    def stops(text):
        ids = prompt + tok(text, add_special_tokens=False)["input_ids"]
        return stop(torch.tensor([ids]), None).tolist()

    assert stops("Sure, my lady") == [False]
    assert stops("Sure. Alice:") == [True]
    assert stops("Sure.\n") == [True]
    assert stops("Sure. Bob:") == [False]


class Interrupting(FakeTTY):
    def readline(self, *a):
        raise KeyboardInterrupt


def test_eof_ctrl_c_and_interrupted_reply_end_cleanly(trained, tmp_path, monkeypatch):
    from charlora.chat import run

    args = chat.make_parser().parse_args(chat_args(trained, "-l", "t", "--greedy"))
    # Ctrl-D at the prompt: exit 0 with a message.
    stderr = io.StringIO()
    assert run(args, FakeTTY(""), FakeTTY(), stderr) == 0
    assert stderr.getvalue().splitlines()[-1] == "(bye)"
    # Ctrl-C at the prompt: exit 130 with a message, no traceback.
    stderr = io.StringIO()
    assert run(args, Interrupting(), FakeTTY(), stderr) == 130
    assert stderr.getvalue().splitlines()[-1] == "(bye)"

    # Ctrl-C during a reply: the turn is dropped and the chat goes on.
    def interrupted(self, prompt, stream=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ChatSession, "generate", interrupted)
    saved = tmp_path / "h.json"
    stderr, stdout = io.StringIO(), FakeTTY()
    assert run(args, FakeTTY(f"{ASK}\n/save {saved}\n"), stdout, stderr) == 0
    assert json.loads(saved.read_text()) == []
    assert stdout.getvalue() == "Alice: Bob: \n" + "Alice: " * 2
    assert "(reply interrupted; Ctrl-C again at the prompt or Ctrl-D to leave)" in stderr.getvalue().splitlines()


def test_fit_context_window_is_the_training_samples_window():
    from charlora.samples import context_window

    for rounds in range(0, len(HISTORY) + 2):
        assert fit_context(HISTORY, "Bob", rounds, len, None) == list(context_window(HISTORY, len(HISTORY), rounds))


@pytest.mark.parametrize("prompt, expected", [
    ("Alice:Hi\n(Enter Carol)\nCarol:Yo\nAlice:Eh?\nBob:", ("Bob", ["Alice", "Carol"])),
    ("Sir Toby Belch:", ("Sir Toby Belch", [])),
    (build_prompt(HISTORY, "Bob"), ("Bob", ["Alice", "Bob", "Carol"])),
])
def test_prompt_speakers(prompt, expected):
    from charlora.prompt import prompt_speakers

    assert prompt_speakers(prompt) == expected


def test_a_loaded_history_carries_no_escapes_and_no_fake_speaker_lines():
    from charlora.history import history_from_json

    data = [{"speaker": "Evil\nBob", "text": "hi \x1b[31mred\x1b[0m \x1b]0;title\x07there"},
            {"speaker": None, "text": "(a door\nslams)"}]
    lines = history_from_json(data, "h.json")
    assert [(line.speaker, line.text) for line in lines] == [("Evil Bob", "hi red there"), (None, "(a door slams)")]


def test_chat_with_stdout_closed_is_an_error_and_with_stdin_closed_an_empty_input(models_dir, monkeypatch, capsys):
    """`chat.py >&-` printed nothing and exited 0; `chat.py <&-` was an
    AttributeError traceback (sys.stdin is None)."""
    args = ["-m", "llama", "--models_dir", str(models_dir), "-n", "Bob", "--dtype", "fp32"]
    monkeypatch.setattr("sys.stdout", None)
    assert chat.main(args) == 2
    assert capsys.readouterr().err == "error: standard output is closed; the replies would have nowhere to go\n"
    monkeypatch.undo()
    monkeypatch.setattr("sys.stdin", None)
    assert chat.main(args) == 0  # as with `< /dev/null`: no line, no reply
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Bob:" not in out


class FullDisk(io.StringIO):
    """Standard output on a full disk (`> /dev/full`)."""

    def write(self, text):
        raise OSError(28, "No space left on device")


def test_a_failed_write_to_stdout_ends_the_chat_with_one_line(trained, monkeypatch):
    """`chat.py > /dev/full` was an OSError traceback; from a pipe the next
    turns would each have generated a reply that could reach no one."""
    from charlora.chat import run

    said = []
    monkeypatch.setattr(ChatSession, "generate", lambda self, prompt, stream=None: said.append(prompt) or ("Hi.", "eos"))
    args = chat.make_parser().parse_args(chat_args(trained, "-l", "t", "--greedy"))
    with pytest.raises(OutputFailed, match=r"^cannot write to standard output \(No space left on device\); stopped$"):
        run(args, io.StringIO(f"{ASK}\nAnd pears?\n"), FullDisk(), io.StringIO())
    assert len(said) == 1
    # Through the script, into the real /dev/full: one line, exit 2, and no
    # "Exception ignored" complaint from the interpreter's last flush.
    import subprocess
    import sys
    from conftest import REPO

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, str(REPO / "chat.py"), *chat_args(trained, "-l", "t", "--greedy",
                                                                                 "--say", ASK)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO)
    assert (done.returncode, done.stderr) == (
        2, "error: cannot write to standard output (No space left on device); stopped\n")


def test_a_closed_or_full_stderr_leaves_stdout_to_the_replies(trained, monkeypatch, capsys):
    """`chat.py 2>&-` printed the notices on stdout, before the JSON reply
    (print(file=None) is stdout); `2>/dev/full` ended the chat before the reply."""
    from charlora.chat import run

    monkeypatch.setattr("sys.stderr", None)
    assert chat.main(chat_args(trained, "-l", "t", "--greedy", "--json", "--say", ASK, "--memory",
                               "--memory_dir", str(trained[0].parent / "mem-closed"), "--embedder", "none")) == 0
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["user"] == ASK
    args = chat.make_parser().parse_args(chat_args(trained, "-l", "t", "--greedy", "--say", ASK, "--memory",
                                                   "--memory_dir", str(trained[0].parent / "mem-full"),
                                                   "--embedder", "none"))
    stdout = io.StringIO()
    assert run(args, io.StringIO(), stdout, FullDisk()) == 0  # the "memory: ..." notice could not be written
    assert stdout.getvalue().startswith("I have ")


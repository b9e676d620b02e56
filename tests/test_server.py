"""serve.py: an OpenAI-compatible server, tested as users meet it: a real
server process on 127.0.0.1 and the official `openai` client, streaming too."""
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import serve
from charlora.chat import ChatSession, Settings
from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.memory import MemorySettings
from charlora.server import (ApiError, Message, ServerConfig, chat_lines, check_config, checked_request, cut_at_stops,
                             stream_prefix)
from conftest import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ pure


def test_messages_become_the_training_lines():
    messages = [Message(role="system", content="You are a helpful assistant."),
                Message(role="user", content="Morning, Bob."),
                Message(role="assistant", content="Bob: The dough doesn't care\nwhat time it is."),
                Message(role="user", name="Carol", content=[{"type": "text", "text": "Sixty rolls?"}]),
                Message(role="assistant", name="Dave", content="Delivery!"),
                Message(role="user", content="Alice: Is the oven on?")]
    history, said = chat_lines(messages, "Bob", "Alice")
    assert history == [Line("Alice", "Morning, Bob."), Line("Bob", "The dough doesn't care what time it is."),
                       Line("Carol", "Sixty rolls?"), Line("Dave", "Delivery!")]
    assert said == Line("Alice", "Is the oven on?")


def test_the_last_message_must_be_the_users():
    with pytest.raises(ApiError, match="the last message must be the user's") as err:
        chat_lines([Message(role="user", content="Hi"), Message(role="assistant", content="Hello")], "Bob", "Alice")
    assert err.value.status == 400
    with pytest.raises(ApiError, match="cannot be a speaker name"):
        chat_lines([Message(role="user", name="<script>", content="Hi")], "Bob", "Alice")


def test_a_system_message_after_the_users_line_is_left_out():
    """SillyTavern's post-history instructions follow the user's line as a
    system message; that was a 400 ("the last message must be the user's")."""
    messages = [Message(role="user", content="Is the oven on?"), Message(role="system", content="[Stay in character.]")]
    assert chat_lines(messages, "Bob", "Alice") == ([], Line("Alice", "Is the oven on?"))
    # OpenAI's deprecated "function" role is still its API's (it was a 400 here): left out as "tool" is.
    messages = [Message(role="function", name="oven", content="{\"on\": true}"), *messages]
    assert chat_lines(messages, "Bob", "Alice") == ([], Line("Alice", "Is the oven on?"))
    for only_system in ([Message(role="system", content="You are Bob.")],
                        [Message(role="user", content="Hi"), Message(role="assistant", content="Hello"),
                         Message(role="system", content="Continue.")]):
        with pytest.raises(ApiError, match=r"^the last message must be the user's, with some text"):
            chat_lines(only_system, "Bob", "Alice")


def test_a_message_that_shows_nothing_is_no_line():
    """A user message of a zero-width space alone was answered as a line."""
    for invisible in ("\u200b", "\u200b\u2060 \ufeff", "\u202e"):
        with pytest.raises(ApiError, match=r"^the last message must be the user's, with some text"):
            chat_lines([Message(role="user", content=invisible)], "Bob", "Alice")
    messages = [Message(role="user", content="Hi"), Message(role="assistant", content="\u200b"),
                Message(role="user", content="Still there?")]
    assert chat_lines(messages, "Bob", "Alice") == ([Line("Alice", "Hi")], Line("Alice", "Still there?"))


def test_stop_strings_cut_and_hold_back_exactly():
    assert cut_at_stops("I'll save you the best one. END more", ["END", "zzz"]) == ("I'll save you the best one.", True)
    assert cut_at_stops("no stop here", ["END"]) == ("no stop here", False)
    assert stream_prefix("the best one. EN", ["END"]) == "the best one. "
    assert stream_prefix("the best one. E", ["END", "Eve:"]) == "the best one. "
    assert stream_prefix("the best one. ENDx", ["END"]) == "the best one."
    assert stream_prefix("the best one", []) == "the best one"


def test_serve_flags_are_chat_pys_settings():
    """serve.py's flags fill chat.py's ChatConfig: --temperature 0 is chat.py --greedy's sampling."""
    args = serve.make_parser().parse_args(["-m", "llama", "-n", " Sir  Toby ", "-u", "Maria", "--temperature", "0",
                                           "--max_new_tokens", "24", "--memory_dir", "mem", "--recall_method", "keyword"])
    c = serve.server_config(args)
    assert c.defaults.sampling == Settings("Bob", "Alice", max_new_tokens=24, greedy=True, temperature=0).sampling
    assert (c.defaults.name, c.defaults.user, c.defaults.model_name, c.model_id) == ("Sir Toby", "Maria", "llama", "llama")
    assert c.memory == MemorySettings(memory_dir=Path("mem"), recall_method="keyword")
    assert serve.server_config(serve.make_parser().parse_args(["-m", "llama", "-n", "Bob"])).memory is None


def test_settings_out_of_range_are_refused_as_chat_py_refuses_them():
    bob = Settings("Bob", "Alice")
    with pytest.raises(CharloraError, match=r"--top_p must be in \(0, 1\], got 0"):
        check_config(ServerConfig(replace(bob, sampling=replace(bob.sampling, top_p=0))))
    with pytest.raises(CharloraError, match="--max_new_tokens 600 is over --max_tokens_limit 512"):
        check_config(ServerConfig(replace(bob, sampling=replace(bob.sampling, max_new_tokens=600))))
    with pytest.raises(CharloraError, match="--user and --name are both 'Bob'"):
        check_config(ServerConfig(Settings("Bob", "Bob")))
    with pytest.raises(ApiError, match=r"^repetition_penalty must be positive, got 0$") as err:
        checked_request(replace(bob, sampling=replace(bob.sampling, repetition_penalty=0)))
    assert (err.value.status, err.value.param) == (400, "repetition_penalty")


# ------------------------------------------------------------------ a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_tokenizers):
    """serve.py on a tiny LLaMA built from config, greedy, memory on."""
    root = tmp_path_factory.mktemp("serve")
    save_tiny_model("llama", tiny_tokenizers["llama-like"], root / "models")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "-m", "llama", "--models_dir", str(root / "models"),
                             "--name", "Bob", "--user", "Alice", "--port", str(port), "--temperature", "0",
                             "--dtype", "fp32", "--memory_dir", str(root / "memory"), "--recall_method", "keyword",
                             "--summarizer", "extractive", "--max_new_tokens", "24"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.25)
        if proc.poll() is not None:
            break
    else:
        proc.kill()
        pytest.fail("server did not start: " + (root / "server.log").read_text())
    assert proc.poll() is None, (root / "server.log").read_text()
    yield base, root
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served[0], api_key="none", max_retries=0, timeout=60)


def turns(root: Path, user: str) -> list[tuple[str, str]]:
    from charlora.memory import memory_file

    path = memory_file(root / "memory", "Bob", user)
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT speaker, text FROM turns ORDER BY id"))


def reference_reply(root: Path, history: list[Line], said: str, user: str = "Alice", max_new_tokens: int = 24) -> str:
    """The reply chat.py's ChatSession gives for the same conversation, greedy."""
    import torch
    from transformers import AutoModelForCausalLM

    from charlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "models" / "llama", dtype=torch.float32).eval()
    session = ChatSession(model, load_tokenizer(root / "models" / "llama"),
                          Settings("Bob", user, max_new_tokens=max_new_tokens, greedy=True))
    session.history = list(history)
    return session.say(said).reply


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["llama"]


def test_chat_reply_streamed_or_not_is_chat_pys_reply(client, served):
    messages = [{"role": "user", "content": "Good morning, Bob."}, {"role": "assistant", "content": "Morning."},
                {"role": "user", "content": "How many apples today?"}]
    plain = client.chat.completions.create(model="llama", messages=messages, user="Hal")
    reply = plain.choices[0].message.content
    want = reference_reply(served[1], [Line("Hal", "Good morning, Bob."), Line("Bob", "Morning.")],
                           "How many apples today?", user="Hal")
    # With memory the server keeps the conversation; Hal's is new, so the request's lines seed it.
    assert reply == want
    assert plain.choices[0].finish_reason in ("stop", "length") and plain.usage.completion_tokens > 0
    assert "\n" not in reply and "Hal:" not in reply
    # Another memory (user "Hal2"), the same speaker (the messages' name): the same prompt.
    named = [{**m, "name": "Hal"} if m["role"] == "user" else m for m in messages]
    stream = client.chat.completions.create(model="llama", messages=named, user="Hal2", stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_completions_continue_a_raw_prompt_with_the_same_stop_rule(client, served):
    prompt = "Alice:Good morning, Bob.\nBob:"
    out = client.completions.create(model="llama", prompt=prompt, temperature=0, max_tokens=24)
    want = reference_reply(served[1], [], "Good morning, Bob.")
    assert out.choices[0].text == want
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="llama", prompt=prompt, temperature=0, max_tokens=24, stream=True))
    assert streamed == out.choices[0].text


def test_memory_keeps_each_users_turns(client, served):
    root = served[1]
    for text in ("My sister is called Ana.", "What is her name?"):
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": text}], user="Maria")
    said = [t for s, t in turns(root, "Maria") if s == "Maria"]
    assert said == ["My sister is called Ana.", "What is her name?"]
    assert turns(root, "Zed") == []
    client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hello"}],
                                   extra_headers={"X-Charlora-User": "Zed"})
    assert [s for s, _ in turns(root, "Zed")][0] == "Zed"


def test_a_raw_utf8_user_header_is_read_as_utf8_and_the_characters_name_is_refused(served):
    """A header "X-Charlora-User: Zoë" sent as raw UTF-8 read as latin-1 ("ZoÃ«", a 400);
    a user named as the character got "the last message must be the user's"."""
    from charlora.server import utf8_header

    assert [utf8_header(v) for v in ("Zo\u00c3\u00ab", "Zo\u00eb", "Ann")] == ["Zo\u00eb", "Zo\u00eb", "Ann"]
    hello = [{"role": "user", "content": "Hello"}]
    r = post(served, {"model": "llama", "messages": hello, "max_tokens": 2},
             headers={"X-Charlora-User": "Zo\u00eb".encode("utf-8")})
    assert r.status_code == 200, r.text
    assert turns(served[1], "Zo\u00eb")[0] == ("Zo\u00eb", "Hello")
    r = post(served, {"model": "llama", "messages": hello, "max_tokens": 2, "user": "Bob"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "the user is named 'Bob', as the character is: give the user a name of their own"
    assert r.json()["error"]["param"] == "user"


def test_a_new_conversation_seeds_memory_with_its_newest_lines_only(served):
    """20,000 earlier messages were all embedded and written on the one
    generation thread: minutes in which every other user waited."""
    from charlora.server_engine import SEED_LINES

    said = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"line {i}"} for i in range(SEED_LINES + 3)]
    r = post(served, {"model": "llama", "messages": [*said, {"role": "user", "content": "and now?"}], "max_tokens": 4,
                      "user": "Seeder"})
    assert r.status_code == 200, r.text
    stored = [t for _, t in turns(served[1], "Seeder")]
    assert stored[0] == "line 3" and stored[SEED_LINES - 1:SEED_LINES + 1] == [f"line {SEED_LINES + 2}", "and now?"]
    assert len(stored) == SEED_LINES + 2  # and the reply


def test_a_users_broken_memory_file_is_a_500_that_says_why_and_no_traceback(served):
    root = served[1]
    (root / "memory" / "Bob--Broken.sqlite").mkdir(parents=True)
    r = post(served, {"model": "llama", "messages": HI, "user": "Broken"})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == (f"memory file {root / 'memory' / 'Bob--Broken.sqlite'} is a folder; give "
                                            "--memory_dir the folder instead")
    assert post(served, {"model": "llama", "messages": HI, "user": "Fine"}).status_code == 200  # still serving
    log = (root / "server.log").read_text()
    assert "Traceback" not in log and f"error: memory file {root / 'memory' / 'Bob--Broken.sqlite'} is a folder" in log


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"model": "llama", "messages": []}, 400, "messages"),
    ({"model": "llama", "messages": [{"role": "user", "content": "hi " * 2000}]}, 400, "messages"),
])
def test_bad_requests_get_openai_errors_with_the_right_status(served, body, status, param):
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    r = httpx.post(f"{served[0]}/chat/completions", json=body, timeout=60)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def post(served, body, path="/chat/completions", **kw):
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    return httpx.post(f"{served[0]}{path}", json=body, timeout=60, **kw)


@pytest.mark.parametrize("prompt", ["", "\u001b[2J\u0007"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_completion_prompt_is_a_400(served, prompt, stream):
    """"" (or control characters alone, which are cleaned away) reached the model: a 500."""
    r = post(served, {"model": "llama", "prompt": prompt, "stream": stream}, path="/completions")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"
    assert r.json()["error"]["message"] == "prompt is empty: give the text to continue"


def test_any_64_bit_seed_is_taken_and_folded_into_numpys_range(served):
    """OpenAI takes 64-bit seeds; numpy's seeding refused all but 0..2**32-1 (a 500)."""
    def reply(seed):  # a new conversation each time (memory is on)
        r = post(served, {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 1,
                          "seed": seed, "user": "Seedy"}, headers={"X-Charlora-Session": f"seed {seed}"})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    assert reply(-1) == reply(2**32 - 1)
    assert reply(2**40 + 7) == reply(7)
    r = post(served, {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "seed": 2**63})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "seed"


def test_a_tiny_temperature_is_greedy_not_nan(served):
    """temperature 1e-300 divided the logits to infinity: NaN probabilities,
    then a 400 blaming the model's weights, coded context_length_exceeded."""
    from charlora.reply import Sampling

    assert not Sampling(greedy=False, temperature=1e-300).sampled and Sampling(greedy=False, temperature=1e-5).sampled

    def reply(temperature):
        r = post(served, {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "user": "Tiny",
                          "temperature": temperature}, headers={"X-Charlora-Session": f"t {temperature}"})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    assert reply(1e-300) == reply(5e-324) == reply(0)


def test_only_a_too_long_line_is_the_requests_fault(tmp_path, tiny_tokenizers):
    """A model giving NaN is the server's failure (a 500 by the app's handler),
    not context_length_exceeded; a too-long line names max_tokens, not chat.py's flag."""
    import torch
    from transformers import AutoModelForCausalLM

    from charlora.server import ChatRequest, Engine

    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = Engine(model, tiny_tokenizers["llama-like"], ServerConfig(
        Settings("Bob", "Alice", max_new_tokens=24, greedy=True, temperature=0), model_id="llama"))
    long = ChatRequest(model="llama", max_tokens=490, messages=[{"role": "user", "content": "hi " * 20}])
    with pytest.raises(ApiError) as err:
        engine.chat(long, "Alice", "api", lambda t: None, threading.Event(), [])
    assert (err.value.status, err.value.code, err.value.message) == (
        400, "context_length_exceeded", "that line is too long for this model: with max_tokens 490 a prompt may "
                                        "have at most 22 tokens")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(CharloraError, match="probabilities are not numbers"):
        engine.chat(ChatRequest(model="llama", messages=[{"role": "user", "content": "hi"}]), "Alice", "api",
                    lambda t: None, threading.Event(), [])


HI = [{"role": "user", "content": "hi"}]
PARTS = "a string or a list of content parts ({\"type\": \"text\", \"text\": ...})"


@pytest.mark.parametrize("path, body, param, message", [
    # A field of several shapes: one error (pydantic's first shape's said "content.str: ... a valid string").
    ("/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     f"messages[0].content: expected {PARTS}"),
    ("/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": ["hi"]}]},
     "messages[0].content", f"messages[0].content: expected {PARTS}"),
    ("/chat/completions", {"model": "llama", "messages": HI, "stop": [5]}, "stop",
     "stop: expected a string or a list of strings"),
    ("/completions", {"model": "llama", "prompt": [1, 2, 3]}, "prompt", "prompt: expected a string"),
    # OpenAI's param spelling, as our own errors write it (was messages.1.role).
    ("/chat/completions", {"model": "llama", "messages": [*HI, {"role": "wizard", "content": "hi"}]},
     "messages[1].role",
     "messages[1].role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'"),
    # No coercion (OpenAI refuses these too): "5" was taken as 5, true as 1 token, "yes" as streaming.
    ("/chat/completions", {"model": "llama", "messages": HI, "max_tokens": "5"}, "max_tokens",
     "max_tokens: Input should be a valid integer"),
    ("/chat/completions", {"model": "llama", "messages": HI, "max_tokens": True}, "max_tokens",
     "max_tokens: Input should be a valid integer"),
    ("/chat/completions", {"model": "llama", "messages": HI, "stream": "yes"}, "stream",
     "stream: Input should be a valid boolean"),
    ("/completions", {"model": "llama", "prompt": "Bob:", "temperature": "0.5"}, "temperature",
     "temperature: Input should be a valid number"),
    # A body that is no JSON object (was "Field required" or "Input should be a valid dictionary ...").
    ("/chat/completions", b"", None, "the request body must be a JSON object (Content-Type: application/json)"),
    ("/chat/completions", b"[1, 2]", None, "the request body must be a JSON object (Content-Type: application/json)"),
    ("/completions", b"null", None, "the request body must be a JSON object (Content-Type: application/json)"),
])
def test_malformed_fields_get_one_clear_error(served, path, body, param, message):
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    if isinstance(body, bytes):
        r = httpx.post(f"{served[0]}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    else:
        r = post(served, body, path)
    assert r.status_code == 400
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": None}


def test_null_is_the_default_for_fields_openai_lets_be_null(served):
    """n and stream may be null in OpenAI's API; both were a 400."""
    r = post(served, {"model": "llama", "messages": HI, "n": None, "stream": None, "stop": None, "user": "Nully"})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"


def test_a_raw_prompt_is_cleaned_as_chat_lines_are(served):
    """A lone surrogate in /v1/completions' prompt failed in the tokenizer (a
    500); the chat path turns it into U+FFFD, and now so does this one."""
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    def text(raw):
        r = httpx.post(f"{served[0]}/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    prompt = b'{"model": "llama", "max_tokens": 8, "prompt": "Alice:a%sb\\nBob:"}'
    assert text(prompt % b"\\ud800") == text(prompt % b"\\ufffd") == text(prompt % b"\\ufffd\\u001b[31m")


def test_malformed_json_non_finite_numbers_and_huge_bodies(served, client):
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    url = f"{served[0]}/chat/completions"
    r = httpx.post(url, content=b'{"model": "llama", "messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # Not UTF-8, or nested past the recursion limit: FastAPI's "There was an error parsing the body", no code.
    for bad in (b'{"model": "llama", "messages": [{"role": "user", "content": "\xff"}]}', b"[" * 100000):
        r = httpx.post(url, content=bad, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == {
            "message": "the request body is not valid JSON", "type": "invalid_request_error", "param": None,
            "code": "invalid_json"}
    nan = b'{"model": "llama", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    r = httpx.post(url, content=nan, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(url, content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Sent in chunks, with no Content-Length to refuse it by: it was read whole (a 400 or worse).
    r = httpx.post(url, content=iter([b"x" * (1 << 16)] * 32), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"] == {
        "message": "the request body is over 1048576 bytes", "type": "invalid_request_error", "param": None,
        "code": "request_too_large"}
    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    # ... and it keeps serving.
    assert client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}]).choices


def test_a_client_dropping_mid_stream_leaves_no_half_turn(served, client):
    import httpx2 as httpx  # the HTTP client the openai package itself uses

    root = served[1]
    body = {"model": "llama", "messages": [{"role": "user", "content": "Tell me about the bakery."}],
            "stream": True, "user": "Quinn", "max_tokens": 200, "temperature": 1.0}
    for _ in range(3):
        with httpx.stream("POST", f"{served[0]}/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event, then hang up
    time.sleep(1.0)
    speakers = [s for s, _ in turns(root, "Quinn")]
    # Whole turns only: each of Quinn's lines is followed by Bob's reply (or the reply was empty).
    assert speakers.count("Quinn") >= speakers.count("Bob")
    assert all(not (a == "Bob" and b == "Bob") for a, b in zip(speakers, speakers[1:]))
    assert client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}]).choices


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_while_queued_leaves_no_turn(tmp_path, tiny_tokenizers, stream):
    """Not streamed, a client that hung up while its request waited in the
    queue still had its reply generated and its turn written to memory: nothing
    looked, and the body-size middleware hid the hang-up from anything that did.
    (Streamed, writing the first piece found the client gone.)"""
    import json

    import torch
    import uvicorn
    from transformers import AutoModelForCausalLM

    from charlora.server import Engine, make_app

    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    engine = Engine(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
                    tiny_tokenizers["llama-like"],
                    ServerConfig(Settings("Bob", "Alice", max_new_tokens=24, greedy=True, temperature=0),
                                 model_id="llama", memory=MemorySettings(memory_dir=tmp_path / "memory",
                                                                         recall_method="keyword",
                                                                         summarizer="extractive")))
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    busy = threading.Event()
    engine.worker.submit(busy.wait)  # the generation thread is taken: the request waits in the queue
    body = json.dumps({"model": "llama", "user": "Quinn", "stream": stream,
                       "messages": [{"role": "user", "content": "Hello?"}]})
    with socket.create_connection(listening.getsockname()) as conn:
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        time.sleep(1.0)
    time.sleep(1.0)  # looked at every 0.25 s
    busy.set()
    engine.worker.submit(lambda: None).result()  # what was queued before has run
    server.should_exit = True
    thread.join(timeout=20)
    assert turns(tmp_path, "Quinn") == []


def test_concurrent_requests_each_get_their_own_reply_and_memory(served, client):
    """Eight users at once: every reply equals the one each gets alone, and
    every user's memory holds exactly their own turns."""
    root, results, errors = served[1], {}, []

    def one(i):
        try:
            r = client.chat.completions.create(model="llama", user=f"Con{i}",
                                               messages=[{"role": "user", "content": f"Number {i} please."}])
            results[i] = r.choices[0].message.content
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(8):
        assert turns(root, f"Con{i}")[0] == (f"Con{i}", f"Number {i} please.")
        assert len(turns(root, f"Con{i}")) == (2 if results[i] else 1)
        alone = client.chat.completions.create(model="llama", user=f"Solo{i}",  # another memory, same speaker
                                               messages=[{"role": "user", "name": f"Con{i}",
                                                          "content": f"Number {i} please."}])
        assert alone.choices[0].message.content == results[i]


def test_engine_drops_the_whole_turn_when_the_client_leaves(tmp_path, tiny_tokenizers):
    """In-process and deterministic: the client leaves after the first piece
    of the reply; generation stops, and neither line reaches memory or the
    conversation.  The next request then writes its whole turn."""
    import torch
    from transformers import AutoModelForCausalLM

    from charlora.memory import MemorySettings
    from charlora.server import ChatRequest, ClientGone, Engine, ServerConfig

    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = Engine(model, tiny_tokenizers["llama-like"], ServerConfig(
        Settings("Bob", "Alice", max_new_tokens=40, greedy=True, temperature=0), model_id="llama",
        memory=MemorySettings(memory_dir=tmp_path / "memory", recall_method="keyword", summarizer="extractive")))
    req = ChatRequest(model="llama", messages=[{"role": "user", "content": "Tell me about the bakery."}])
    gone, pieces = threading.Event(), []

    def emit(text):
        pieces.append(text)
        gone.set()

    with pytest.raises(ClientGone):
        engine.chat(req, "Quinn", "api", emit, gone, [])
    assert len(pieces) == 1
    assert turns(tmp_path, "Quinn") == []
    assert engine.users["Quinn\napi"].history == []
    result = engine.chat(req, "Quinn", "api", lambda text: None, threading.Event(), [])
    assert result.reply.startswith(pieces[0])
    assert turns(tmp_path, "Quinn") == [("Quinn", "Tell me about the bakery."), ("Bob", result.reply)]


def test_engine_with_pcw_and_a_stop_string(tmp_path, tiny_tokenizers):
    """--pcw goes through ChatSession's parallel-window path (usage counts its
    tokens); a `stop` string cuts the reply, and the cut reply is what the
    conversation keeps."""
    import torch
    from transformers import AutoModelForCausalLM

    from charlora.server import ChatRequest, Engine, ServerConfig

    folder = save_tiny_model("llama", tiny_tokenizers["llama-like"], tmp_path / "models")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    plain = Engine(model, tiny_tokenizers["llama-like"], ServerConfig(
        Settings("Bob", "Alice", rounds=2, max_new_tokens=30, greedy=True, temperature=0), model_id="llama"))
    pcw = Engine(model, tiny_tokenizers["llama-like"], ServerConfig(
        Settings("Bob", "Alice", rounds=2, max_new_tokens=30, greedy=True, temperature=0, pcw=2), model_id="llama"))
    lines = ["Good morning, Bob.", "Morning, Alice.", "Is the oven on?", "Since four.", "Sixty rolls, please."]
    req = ChatRequest(model="llama", messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                               for i, t in enumerate(lines)])
    a = plain.chat(req, "Alice", "api", lambda t: None, threading.Event(), [])
    b = pcw.chat(req, "Alice", "api", lambda t: None, threading.Event(), [])
    assert a.reply and b.reply
    assert b.prompt_tokens > a.prompt_tokens  # the older lines are read too, in windows
    cut = a.reply[: max(1, len(a.reply) // 2)]
    stop = a.reply[len(cut):][:3]
    c = plain.chat(req, "Alice", "api", lambda t: None, threading.Event(), [stop])
    assert c.ended_by == "stop" and c.reply == a.reply[: a.reply.index(stop)].rstrip()

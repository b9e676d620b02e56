"""chat.py --pcw: older lines in parallel windows beside the recent ones, split
as PCW training splits them."""
from charlora.dialogue import Line
from charlora.pcw import pcw_layout, pcw_sample
from charlora.prompt import build_prompt
from conftest import chat_history, chat_session

HISTORY = chat_history()
OLDER = "Alice:Hi.\nBob:Hello, Alice.\n(Enter Carol)\nCarol:What news?\nAlice:How many apples?\n"


def test_pcw_parts_put_older_lines_in_windows(tiny_llama, tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    s = chat_session(tiny_llama, tok, rounds=2, pcw=2)
    prefix, windows, task = s.pcw_parts()
    assert prefix == [tok.bos_token_id]
    assert tok.decode(task) == "Bob:Two.\nAlice:Only two?\nBob:"
    text = [tok.decode(w) for w in windows]
    assert len(text) == 2 and all(t.endswith("\n") for t in text)
    assert "".join(text) == OLDER  # every older line, once, in order


def test_chat_windows_are_the_training_windows(tiny_llama, tiny_tokenizers):
    """The same lines give the same token ids, window edges and positions in
    chat --pcw and in a --pcw_windows training sample."""
    tok = tiny_tokenizers["llama-like"]
    for windows in (1, 2, 3):
        s = chat_session(tiny_llama, tok, rounds=2, pcw=windows)
        prefix, parts, task = s.pcw_parts()
        chat = pcw_layout(prefix, parts, task)
        trained = pcw_sample(tok, build_prompt(HISTORY, "Bob"), "Three.", 512, windows, recent=2)
        n = len(chat["input_ids"])
        assert trained["labels"][:n] == [-100] * n and trained["labels"][n] != -100
        for key in ("input_ids", "position_ids", "segments"):
            assert trained[key][:n] == chat[key], (windows, key)


def test_one_window_replies_like_the_whole_prompt(tiny_llama, tiny_tokenizers):
    """PCW with one window is ordinary attention over older + recent lines."""
    tok = tiny_tokenizers["llama-like"]
    whole = chat_session(tiny_llama, tok, rounds=50, greedy=True, max_new_tokens=12)
    one = chat_session(tiny_llama, tok, rounds=2, greedy=True, max_new_tokens=12, pcw=1)
    assert one.generate_pcw() == whole.generate(whole.prompt())


def test_say_with_windows_keeps_the_conversation(tiny_llama, tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    expected = chat_session(tiny_llama, tok, rounds=2, greedy=True, max_new_tokens=12, pcw=2)
    expected.history.append(Line("Alice", "And pears?"))
    reply, ended_by = expected.generate_pcw()
    two = chat_session(tiny_llama, tok, rounds=2, greedy=True, max_new_tokens=12, pcw=2)
    said = two.say("And pears?")
    assert (said.reply, said.ended_by) == (reply, ended_by)
    assert two.history[len(HISTORY)] == Line("Alice", "And pears?")
    assert two.history[len(HISTORY) + 1 :] == ([Line("Bob", reply)] if reply else [])

"""chat.py --pcw: older lines in parallel windows beside the recent ones."""
import pytest

from charlora.chat import parallel_windows
from charlora.dialogue import Line
from test_chat import HISTORY, session, tiny_llama  # noqa: F401  (fixture)

LINES = [Line("A", "x" * n) for n in (3, 5, 2, 4, 6, 1)]


def sizes(windows):
    return [[len(line.text) for line in w] for w in windows]


def size(line):
    return len(line.text)


@pytest.mark.parametrize("n, budget, expected", [
    (3, 8, [[3, 5], [2, 4], [6, 1]]),   # 21 tokens in 3 spans of 7, each window within 8
    (3, 100, [[3, 5], [2, 4], [6, 1]]),
    (1, 100, [[3, 5, 2, 4, 6, 1]]),
    (2, 7, [[2, 4], [6, 1]]),           # the newest 13 tokens fit 2 x 7; 5 and 3 are dropped
    (2, 6, [[6], [1]]),                 # an even split overflows: filled from the newest line back
    (0, 10, []),
    (2, 0, []),
])
def test_parallel_windows(n, budget, expected):
    assert sizes(parallel_windows(LINES, n, size, budget)) == expected


def test_pcw_parts_put_older_lines_in_windows(tiny_llama, tiny_tokenizers):
    s = session(tiny_llama, tiny_tokenizers, rounds=2, pcw=2)
    tok = tiny_tokenizers["llama-like"]
    prefix, windows, task = s.pcw_parts()
    assert prefix == [tok.bos_token_id]
    assert tok.decode(task) == "Bob:Two.\nAlice:Only two?\nBob:"
    text = [tok.decode(w) for w in windows]
    assert len(text) == 2 and all(t.endswith("\n") for t in text)
    # every older line, once, in order
    older = "".join(text)
    assert older == "".join(f"{l.speaker}:{l.text}\n" if l.speaker else f"{l.text}\n" for l in HISTORY[:-2])


def test_one_window_replies_like_the_whole_prompt(tiny_llama, tiny_tokenizers):
    """PCW with one window is ordinary attention over older + recent lines."""
    whole = session(tiny_llama, tiny_tokenizers, rounds=50, greedy=True, max_new_tokens=12)
    one = session(tiny_llama, tiny_tokenizers, rounds=2, greedy=True, max_new_tokens=12, pcw=1)
    assert one.generate_pcw() == whole.generate(whole.prompt())


def test_say_with_windows_keeps_the_conversation(tiny_llama, tiny_tokenizers):
    two = session(tiny_llama, tiny_tokenizers, rounds=2, greedy=True, max_new_tokens=12, pcw=2)
    said = two.say("And pears?")
    assert said.ended_by in {"eos", "newline", "speaker", "length"}
    assert two.history[len(HISTORY)] == Line("Alice", "And pears?")
    assert len(two.history) == len(HISTORY) + 1 + bool(said.reply)

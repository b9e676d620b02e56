"""prepare_dataset.py: the dialogue format, samples and bad input, exact values."""
import json

import pytest

import prepare_dataset
from charlora.dialogue import Line, decode_dialogue, parse_dialogue, parse_line
from charlora.errors import CharloraError
from charlora.prompt import build_prompt
from charlora.samples import build_samples, write_json_atomic

from pathlib import Path

TURING = Path(__file__).parent / "fixtures" / "turing.txt"
NARRATION = ("Here is a sample dialogue. The text file can also contain non-dialogue lines like this one; "
             "dialogue lines start with the character's name.")
A1 = ("Alice:In the first line of your sonnet which reads 'Shall I compare thee to a summer's day', "
      "would not 'a spring day' do as well or better?")
A2 = "Alice:How about 'a winter's day' That would scan all right."
A3 = "Alice:Would you say Mr. Pickwick reminded you of Christmas?"
A4 = ("Alice:(You can put some actions or ideas in parentheses, asterisks are also fine)Yet Christmas is a "
      "winter's day, and I do not think Mr. Pickwick would mind the comparison.")
B1, B2, B3 = "Bob:It wouldn't scan.", "Bob:Yes, but nobody wants to be compared to a winter's day.", "Bob:In a way."
B4_TEXT = ("I don't think you're serious. By a winter's flay one means a typical winter's day, rather than a "
           "special one like Christmas.")


def run(tmp_path, *args):
    out = tmp_path / "out.json"
    code = prepare_dataset.main(["-j", str(out), *args])
    return code, (json.loads(out.read_text(encoding="utf-8")) if out.exists() else None)


def test_turing_sample_gives_the_four_documented_samples(tmp_path):
    code, samples = run(tmp_path, "--name", "Bob", "-t", str(TURING))
    assert code == 0
    assert samples == [
        {"output": "It wouldn't scan.", "input": "\n".join([NARRATION, A1, "Bob:"])},
        {"output": "Yes, but nobody wants to be compared to a winter's day.", "input": "\n".join([NARRATION, A1, B1, A2, "Bob:"])},
        {"output": "In a way.", "input": "\n".join([A1, B1, A2, B2, A3, "Bob:"])},
        # the context runs across the blank line
        {"output": B4_TEXT, "input": "\n".join([A2, B2, A3, B3, A4, "Bob:"])},
    ]
    assert list(samples[0]) == ["output", "input"]  # key order of existing files


def test_defaults_read_dataset_txt_and_write_processed_dataset_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dataset.txt").write_bytes(TURING.read_bytes())
    assert prepare_dataset.main(["-n", "Bob", "-r", "1"]) == 0
    samples = json.loads((tmp_path / "processed_dataset.json").read_text(encoding="utf-8"))
    assert samples[2] == {"output": "In a way.", "input": A3 + "\nBob:"}


@pytest.mark.parametrize("raw, expected", [
    ("Bob:Bobby is here", Line("Bob", "Bobby is here")),
    ("Bobby:hi", Line("Bobby", "hi")),
    ("Bob :hi", Line("Bob", "hi")),
    ("Bob\uff1ahi", Line("Bob", "hi")),
    ("Bob: hi ", Line("Bob", "hi")),
    ("Sir Toby Belch:Out o' tune, sir", Line("Sir Toby Belch", "Out o' tune, sir")),
    ("(Enter VIOLA, a Captain, and Sailors)", Line(None, "(Enter VIOLA, a Captain, and Sailors)")),
    ("Alice:*waves* Hello: again", Line("Alice", "*waves* Hello: again")),
    ("See https://example.org for more", Line(None, "See https://example.org for more")),
    ("http://example.org", Line(None, "http://example.org")),
    ("Act 1, Scene 2: The garden", Line(None, "Act 1, Scene 2: The garden")),
    ("   ", None),
])
def test_parse_line(raw, expected):
    assert parse_line(raw) == expected


def test_only_the_exact_name_is_the_character():
    lines = parse_dialogue("Bobby:not me\nBob:Bobby is here\nBob :spaced\nBob\uff1afull width\n")
    assert build_samples(lines, "Bob", 0) == [
        {"output": "Bobby is here", "input": "Bob:"},
        {"output": "spaced", "input": "Bob:"},
        {"output": "full width", "input": "Bob:"},
    ]


def test_context_lines_are_written_in_the_canonical_shape():
    lines = parse_dialogue("Alice : hi there\nBob:hello\n")
    assert build_samples(lines, "Bob", 5) == [{"output": "hello", "input": "Alice:hi there\nBob:"}]
    assert build_prompt(lines[:1], "Bob") == "Alice:hi there\nBob:"


def test_every_input_ends_with_the_name_prompt_even_without_full_context():
    lines = parse_dialogue("Bob:first\nAlice:x\nBob:second\n")
    samples = build_samples(lines, "Bob", 5)
    assert [s["input"] for s in samples] == ["Bob:", "Bob:first\nAlice:x\nBob:"]


def test_blank_lines_are_remembered_but_do_not_cut_context():
    lines = parse_dialogue("A:x\n\n\nBob:y\n")
    assert lines == [Line("A", "x"), Line("Bob", "y", after_blank=True)]
    assert build_samples(lines, "Bob", 5) == [{"output": "y", "input": "A:x\nBob:"}]


def test_empty_speaker_lines_are_dropped():
    assert parse_dialogue("Bob:\nBob:  \nBob:ok") == [Line("Bob", "ok")]


@pytest.mark.parametrize("data", [
    "\ufeffAlice:caf\u00e9\r\nBob:na\u00efve\r\n".encode("utf-8"),
    "Alice:caf\u00e9\r\nBob:na\u00efve\r\n".encode("utf-8"),
    "Alice:caf\u00e9\nBob:na\u00efve\n".encode("utf-16"),
])
def test_bom_crlf_and_utf16_decode_to_the_same_lines(data):
    text, _ = decode_dialogue(data)
    assert parse_dialogue(text) == [Line("Alice", "caf\u00e9"), Line("Bob", "na\u00efve")]


def test_cp1252_file_reads_correctly(tmp_path):
    src = tmp_path / "cp.txt"
    body = "Alice:Don\u2019t you think the caf\u00e9 na\u00efvet\u00e9 is d\u00e9j\u00e0 vu \u2014 \u00e0 la fran\u00e7aise?\n" * 3
    src.write_bytes((body + "Bob:Oui, c\u2019est tr\u00e8s \u00e9l\u00e9gant.\n").encode("cp1252"))
    code, samples = run(tmp_path, "-n", "Bob", "-t", str(src), "-r", "1")
    assert code == 0
    assert samples == [{"output": "Oui, c\u2019est tr\u00e8s \u00e9l\u00e9gant.", "input": body.splitlines()[-1] + "\nBob:"}]


def test_undecodable_bytes_fail_with_a_clear_error():
    with pytest.raises(CharloraError, match="not UTF-8"):
        decode_dialogue(bytes(range(256)) * 2 + b"\x81\x8d\x8f\x90\x9d" * 50)


def error_of(capsys, *argv):
    code = prepare_dataset.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_missing_file(capsys, tmp_path):
    assert "not found" in error_of(capsys, "-n", "Bob", "-t", str(tmp_path / "nope.txt"), "-j", str(tmp_path / "o.json"))


def test_empty_file(capsys, tmp_path):
    (tmp_path / "e.txt").write_text("\n  \n")
    assert "is empty" in error_of(capsys, "-n", "Bob", "-t", str(tmp_path / "e.txt"), "-j", str(tmp_path / "o.json"))


def test_unknown_name_lists_speakers_and_closest_match(capsys, tmp_path):
    err = error_of(capsys, "-n", "bobb", "-t", str(TURING), "-j", str(tmp_path / "o.json"))
    assert err == f"error: no line by 'bobb' in {TURING}; speakers found: Alice (4), Bob (4); closest: Bob\n"
    assert not (tmp_path / "o.json").exists()


def test_negative_rounds(capsys, tmp_path):
    assert "--rounds" in error_of(capsys, "-n", "Bob", "-r", "-1", "-t", str(TURING), "-j", str(tmp_path / "o.json"))


def test_unwritable_output_keeps_nothing_half_written(capsys, tmp_path):
    assert "does not exist" in error_of(capsys, "-n", "Bob", "-t", str(TURING), "-j", str(tmp_path / "no" / "o.json"))
    assert "is a folder" in error_of(capsys, "-n", "Bob", "-t", str(TURING), "-j", str(tmp_path))


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    out = tmp_path / "o.json"
    out.write_text("[1]")
    with pytest.raises(TypeError):
        write_json_atomic([object()], out)
    assert out.read_text() == "[1]"
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


def test_a_full_disk_leaves_the_dataset_and_its_source_a_pair(capsys, tmp_path, monkeypatch):
    """The samples were renamed into place before the .source.json was written:
    a full disk there left new samples beside the old source (training then
    noted the mismatch and dropped the held-out-aware data)."""
    import os

    out = tmp_path / "o.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(TURING), "-j", str(out), "--export", "openai"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["o.json", "o.openai.jsonl", "o.source.json"]
    real_fsync, calls = os.fsync, []

    def full_on_the_second(fd):  # the .source.json's temp file: the disk is full by then
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_the_second)
    message = error_of(capsys, "-n", "Alice", "-t", str(TURING), "-j", str(out), "--export", "openai")
    assert message == f"error: cannot write {tmp_path / 'o.source.json'}: No space left on device\n"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old three, and no temp file


def test_summary_is_printed(capsys, tmp_path):
    assert prepare_dataset.main(["-n", "Bob", "-t", str(TURING), "-j", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "4 samples written; 2 speakers seen" in out


@pytest.mark.parametrize("text, encoding", [
    ("Gr\u00fc\u00dfe aus K\u00f6ln, sch\u00f6ne Stra\u00dfe.\nBob:Ja, gewi\u00df.\n", "latin-1"),
    ("\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430? \u0425\u043e\u0440\u043e\u0448\u043e, \u0441\u043f\u0430\u0441\u0438\u0431\u043e.\n\u0411\u043e\u0431:\u0414\u0430.\n", "cp1251"),
])
def test_other_legacy_encodings_read_correctly(text, encoding):
    assert decode_dialogue(text.encode(encoding))[0] == text


def test_split_scenes_on_a_play_names_its_breaks_as_a_play_has_them(tmp_path, capsys):
    """It said "(in chats, silences of 360+ minutes)" of a play's blank lines."""
    (tmp_path / "p.txt").write_text("Alice:Hi.\nBob:Yo.\n\nAlice:Later.\nBob:Aye.\n")
    assert prepare_dataset.main(["-n", "Bob", "-t", str(tmp_path / "p.txt"), "-j", str(tmp_path / "p.json"),
                                 "--split_scenes"]) == 0
    assert "scene breaks that end a context: 1 (blank lines and scene headings)" in capsys.readouterr().out.splitlines()


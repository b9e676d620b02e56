"""The hostile-input suite of issue 14, for prepare_dataset.py and the pure
functions behind it.  Every case ends one of two ways:

- exit 0 with the right result, or
- exit 2 with exactly one `error: ...` line,

and in both: no traceback, no hang (10 s, enforced by an alarm), no file
outside its folder, and an earlier output left intact when the run fails.
Training cases are in tests/test_hostile_train.py.  The classes and counts
are listed in docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import time
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest

import prepare_dataset
from charlora.dialogue import decode_dialogue
from charlora.errors import CharloraError
from charlora.files import check_outputs, make_folder, safe_name, strict_json, write_json_atomic, write_text_atomic
from charlora.readers import read_source
from charlora.text import clean_speaker, strip_controls

TIME_LIMIT = 10.0
TURING = Path(__file__).parent / "fixtures" / "turing.txt"
EARLIER = '[{"output": "earlier", "input": "Bob:"}]\n'


@contextmanager
def deadline(seconds: float = TIME_LIMIT):
    """Fail, not hang: an alarm ends the block after 6x `seconds` of wall time
    (this machine's cores are shared, so wall time runs several times the
    CPU time), and the block must use under `seconds` of CPU time."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {6 * seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(6 * seconds))
    start = time.process_time()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.process_time() - start < seconds


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def prepare(capsys, tmp_path: Path, *args: str, out: Path | None = None) -> tuple[int, str, str]:
    """Run prepare_dataset.main in-process under the suite's rules.

    An earlier output sits at `out` (default tmp/out.json) before the run;
    on failure it must be intact.  Only `out` and its exports may appear.
    Returns (exit code, stdout, the error line or "")."""
    out = out or tmp_path / "out.json"
    if not out.exists() and not out.is_symlink() and out.parent.is_dir():
        out.write_text(EARLIER)
    before = tree(tmp_path)
    with deadline():
        try:
            rc = prepare_dataset.main(["-j", str(out), *args])
        except SystemExit as exc:  # argparse
            rc = exc.code
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    assert "\x1b" not in stdout + stderr  # no escape reaches the terminal
    new = tree(tmp_path) - before
    allowed = {out.name, out.stem + ".source.json", out.stem + ".openai.jsonl", out.stem + ".sharegpt.json"}
    assert all(Path(p).name in allowed for p in new), new
    if rc == 0:
        return rc, stdout, ""
    assert rc == 2, (rc, stderr)
    errors = [l for l in stderr.splitlines() if l.startswith("error: ") or ": error: " in l]
    assert len(errors) == 1, stderr
    if out.is_file() and not out.is_symlink():
        assert out.read_text() == EARLIER  # an earlier output is intact
    return rc, stdout, errors[0]


def samples_of(out: Path) -> list[dict]:
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data and all(list(s) == ["output", "input"] and s["output"].strip() for s in data)
    return data


def prepare_text(capsys, tmp_path: Path, text: str, fmt: str) -> list[dict] | None:
    """prepare() on `text` as a file in `fmt`, for Bob: the samples, or None
    when the run was refused (with one error line)."""
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    rc, _, _ = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), "--format", fmt)
    return samples_of(tmp_path / "out.json") if rc == 0 else None


# ------------------------------------------------------------- pathological files
# ~1 MB each.  Before the fix, auto detection ran every reader over the whole
# file and several patterns were quadratic: 50,000 `[[` lines took 65 s.

MB = 1_000_000
STAMP = "12/03/2023, 14:05 - Bob: "
PATHOLOGICAL = {
    "fountain notes": "[[\n" * (MB // 3),
    "fountain boneyard": "/*\n" * (MB // 3),
    "markdown heading spaces": "# a" + " " * MB + "b\n",
    "markdown heading hashes": "# a" + " #" * (MB // 2) + "b\n",
    "whatsapp spaces": STAMP + " " * MB + "x\n",
    "whatsapp continuations": STAMP + "hi\n" + "x\n" * (MB // 2),
    "whatsapp blank lines": STAMP + "hi\n" + "\n" * MB,
    "whatsapp edited spaces": STAMP + "a" + " " * MB + "<This message was edited>\n",
    "whatsapp many messages": "1/1/21, 1:11 - A: x\n" * (MB // 20),
    "whatsapp stamp spaces": "12/03/2023, 14:05" + " " * MB + "\n",
    "name spaces": "Bob" + " " * MB + "x\n",
    "colons": ":" * MB,
    "a colons": "a:" * (MB // 2),
    "parens": "(" * MB,
    "brackets": "[" * MB + "]",
    "bold": "**" + "a" * MB,
    "stars": "*" + " *" * (MB // 2),
    "underscores": "_" + "a_" * (MB // 2),
    "cue parens": "BOB" + " (x)" * (MB // 4) + "\nhi\n",
    "play words": "A " * (MB // 2) + ".",
    "honorifics": "MRS. " * (MB // 5),
    "scene headings": "INT. " * (MB // 5),
    "ansi": "\x1b[" * (MB // 2),
    "osc": "\x1b]" * (MB // 2),
    "carriage returns": "\r" * MB,
    "line separators": "\u2028" * (MB // 2),
    "one long line": "x" * MB,
    "many short lines": "a\n" * (MB // 2),
    "bold cues": "**A**\n\n" * (MB // 7),
    "caps cues": "BOB\n" * (MB // 4),
}
TEXT_FORMATS = ["auto", "name-line", "fountain", "play", "markdown", "whatsapp"]


@pytest.mark.slow  # 180 files of 1 MB: about a second each
@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("case", list(PATHOLOGICAL))
def test_pathological_file_is_read_in_linear_time(case, fmt, tmp_path, capsys):
    prepare_text(capsys, tmp_path, PATHOLOGICAL[case], fmt)


# ------------------------------------------------------------- bounded reads

def test_dev_zero_is_refused_at_once(tmp_path, capsys):
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", "/dev/zero")
    assert "not a regular file" in error


def test_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(tmp_path / "pipe"))
    assert "not a regular file" in error


def test_a_file_past_the_size_limit_is_refused(tmp_path, capsys, monkeypatch):
    import charlora.dialogue

    monkeypatch.setattr(charlora.dialogue, "MAX_INPUT_BYTES", 1000)
    src = tmp_path / "big.txt"
    src.write_text("Bob:hi\n" * 200)
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src))
    assert "larger than" in error and "split it" in error


# ------------------------------------------------------------- strict UTF-8 first

ACCENTED = "Bob:Ça va très bien, merci.\nAlice:Très bien ! Où es-tu ?\n" * 20


@pytest.mark.parametrize("line", [1, 2, 7, 40])
@pytest.mark.parametrize("bad", [b"\xff", b"\x81", b"\xe9", b"\xc3"])
def test_one_bad_byte_in_utf8_is_reported_with_its_line(line, bad, tmp_path, capsys):
    rows = ACCENTED.encode("utf-8").split(b"\n")
    rows[line - 1] = rows[line - 1][:6] + bad + rows[line - 1][6:]
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(rows))
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src))
    assert f"on line {line}" in error and "UTF-8" in error


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "utf-16", "cp1250"])
def test_a_legacy_file_still_goes_to_detection(encoding, tmp_path, capsys):
    text = "Bob:Ça va très bien, merci, à bientôt.\nAlice:Très bien, élégant café crème.\n" * 20
    if encoding == "cp1250":
        text = "Bob:Zażółć gęślą jaźń, proszę bardzo.\nAlice:Dziękuję, świetnie.\n" * 20
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode(encoding))
    rc, _, _ = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src))
    assert rc == 0
    assert samples_of(tmp_path / "out.json")[0]["output"] == text.split("\n")[0].removeprefix("Bob:")


def test_decode_dialogue_exact():
    assert decode_dialogue("Bob:é\n".encode("utf-8")) == ("Bob:é\n", "utf-8")
    with pytest.raises(CharloraError, match=r"bad byte \(0xff\) on line 2 and 1 more"):
        decode_dialogue("Bob:é\n".encode() + b"\xff\n" + "é\n".encode() * 5 + b"\xfe")


# ------------------------------------------------------------- numeric flags

@pytest.mark.parametrize("flags, expected", [
    (["--scene_gap_minutes", "nan"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "inf"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "-inf"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "1e300"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "1e7"], None),
    (["--scene_gap_minutes", "10000001"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "0"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "-5"], "--scene_gap_minutes"),
    (["--scene_gap_minutes", "1e-300"], None),
    (["--scene_gap_minutes", "ten"], "invalid float value"),
    (["--rounds", "-1"], "--rounds"),
    (["--rounds", "1001"], "--rounds"),
    (["--rounds", "1000"], None),
    (["--rounds", "0"], None),
    (["--rounds", str(10 ** 30)], "--rounds"),
    (["--rounds", "1e3"], "invalid int value"),
    (["--rounds", "nan"], "invalid int value"),
    (["--cutoff_len", "7"], "--cutoff_len"),
    (["--cutoff_len", "-1"], "--cutoff_len"),
    (["--cutoff_len", "8"], None),
    (["--phone_region", "XX"], "--phone_region"),
    (["--phone_region", "gb"], None),
    (["--phone_region", ""], "--phone_region"),
])
def test_numeric_flags_are_checked_first(flags, expected, tmp_path, capsys):
    rc, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(TURING), *flags)
    if expected is None:
        assert rc == 0 and samples_of(tmp_path / "out.json")
    else:
        assert expected in error


# ------------------------------------------------------------- outputs

def _same_file_spellings(tmp_path: Path) -> dict[str, tuple[str, str]]:
    src = tmp_path / "x.txt"
    src.write_bytes(TURING.read_bytes())
    (tmp_path / "link.txt").symlink_to(src)
    os.link(src, tmp_path / "hard.txt")
    (tmp_path / "sub").mkdir()
    return {
        "same path": (str(src), str(src)),
        "dot spelling": (str(src), str(tmp_path / "." / "x.txt")),
        "parent spelling": (str(src), str(tmp_path / "sub" / ".." / "x.txt")),
        "symlink to input": (str(src), str(tmp_path / "link.txt")),
        "input is the symlink": (str(tmp_path / "link.txt"), str(src)),
        "hard link": (str(src), str(tmp_path / "hard.txt")),
    }


@pytest.mark.parametrize("spelling", ["same path", "dot spelling", "parent spelling", "symlink to input",
                                      "input is the symlink", "hard link"])
def test_output_equal_to_input_is_refused(spelling, tmp_path, capsys, monkeypatch):
    src, out = _same_file_spellings(tmp_path)[spelling]
    before = Path(src).read_bytes()
    monkeypatch.chdir(tmp_path)
    rc = prepare_dataset.main(["-n", "Bob", "-t", src, "-j", out])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("error: ") == 1 and "is the input file" in err
    assert Path(src).read_bytes() == before


def test_relative_output_equal_to_input_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "x.txt").write_bytes(TURING.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert prepare_dataset.main(["-n", "Bob", "-t", "x.txt", "-j", "./x.txt"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert (tmp_path / "x.txt").read_bytes() == TURING.read_bytes()


@pytest.mark.parametrize("kind", ["openai", "sharegpt"])
def test_an_export_that_would_replace_the_input_is_refused(kind, tmp_path, capsys):
    suffix = {"openai": ".openai.jsonl", "sharegpt": ".sharegpt.json"}[kind]
    src = tmp_path / f"out{suffix}"
    src.write_bytes(TURING.read_bytes())
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), "--export", kind)
    assert "is the input file" in error and src.read_bytes() == TURING.read_bytes()


def test_a_refused_export_leaves_every_output_unwritten(tmp_path, capsys):
    (tmp_path / "out.sharegpt.json").mkdir()  # the second export can't be written
    _, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(TURING), "--export", "openai", "sharegpt")
    assert "is a folder" in error
    assert not (tmp_path / "out.openai.jsonl").exists()
    assert (tmp_path / "out.json").read_text() == EARLIER


def test_evaluate_json_into_a_read_only_folder_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    """A read-only disk was found only at the write, after the whole evaluation.
    (os.access stands in for the read-only mount, which root's tests can't make;
    -m nope: the model is never reached.)"""
    import evaluate

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if (Path(p) == tmp_path and mode == os.W_OK) else real(p, mode))
    rc = evaluate.main(["-m", "nope", "--models_dir", str(tmp_path / "models"), "-n", "Bob", "-t", str(TURING),
                        "--json", str(tmp_path / "out.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == f"error: cannot write {tmp_path / 'out.json'}: folder {tmp_path} is read-only; choose another place\n"


@pytest.mark.parametrize("target", ["fifo", "dev null", "read-only", "read-only export", "folder", "missing folder",
                                    "symlink to dev null", "socket"])
def test_outputs_that_must_not_be_replaced(target, tmp_path, capsys):
    out = tmp_path / "out.json"
    extra = []
    if target == "fifo":
        os.mkfifo(out)
    elif target == "dev null":
        out = Path("/dev/null")
    elif target == "read-only":
        out.write_text(EARLIER)
        out.chmod(0o444)
    elif target == "read-only export":
        (tmp_path / "out.openai.jsonl").write_text("keep\n")
        (tmp_path / "out.openai.jsonl").chmod(0o444)
        extra = ["--export", "openai"]
    elif target == "folder":
        out.mkdir()
    elif target == "missing folder":
        out = tmp_path / "no" / "such" / "out.json"
    elif target == "symlink to dev null":
        out.symlink_to("/dev/null")
    elif target == "socket":
        import socket

        sock = socket.socket(socket.AF_UNIX)
        os.chdir(tmp_path)
        sock.bind("out.json")
    rc, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(TURING), *extra, out=out)
    assert rc == 2 and error
    if target.startswith("read-only"):
        assert "read-only" in error
    if target == "read-only export":
        assert (tmp_path / "out.openai.jsonl").read_text() == "keep\n"
        assert (tmp_path / "out.json").read_text() == EARLIER
    if target in ("fifo", "symlink to dev null", "dev null", "socket"):
        assert "not a regular file" in error
        assert not out.is_file()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_new_outputs_get_the_umask_permissions(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        write_json_atomic([1], tmp_path / "a.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode


def test_a_replaced_output_keeps_its_mode_and_a_symlink_stays(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    real.chmod(0o640)
    (tmp_path / "link.json").symlink_to(real)
    write_text_atomic("new", tmp_path / "link.json")
    assert (tmp_path / "link.json").is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temp file left


@pytest.mark.parametrize("value, expected", [
    (float("nan"), "null"), (float("inf"), "null"), (-float("inf"), "null"), (1.5, "1.5"),
    ({"a": [float("nan"), 1]}, '{"a": [null, 1]}'), ((float("inf"),), "[null]"), ("NaN", '"NaN"'),
])
def test_strict_json(value, expected):
    assert strict_json(value, indent=None) == expected
    json.loads(strict_json(value), parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))


def test_make_folder_says_which_part_of_the_path_is_wrong(tmp_path):
    """The one mkdir for folders a user names: a path that is a file, and one
    whose parent is a file, are one line each; an existing folder is fine."""
    (tmp_path / "afile").write_text("x")
    assert make_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert (tmp_path / "new" / "deeper").is_dir()
    assert make_folder(tmp_path / "new") == tmp_path / "new"
    with pytest.raises(CharloraError) as err:
        make_folder(tmp_path / "afile", "; pick a folder")
    assert str(err.value) == f"cannot write to {tmp_path / 'afile'}: it is a file, not a folder; pick a folder"
    with pytest.raises(CharloraError) as err:
        make_folder(tmp_path / "afile" / "sub")
    assert str(err.value) == f"cannot write to {tmp_path / 'afile' / 'sub'}: Not a directory"
    assert (tmp_path / "afile").read_text() == "x"


def test_check_outputs_names_two_outputs_that_are_one_file(tmp_path):
    with pytest.raises(CharloraError, match="two outputs are the same file"):
        check_outputs([tmp_path / "a.json", tmp_path / "." / "a.json"])


# ------------------------------------------------------------- names and paths

@pytest.mark.parametrize("name, expected", [
    ("../../x/pwn", "x_pwn"), ("/abs/path", "abs_path"), ("", "unnamed"), (".", "unnamed"), ("..", "unnamed"),
    ("a\x00b", "a_b"), ("x" * 250, "x" * 120), ("é" * 100, "é" * 60), ("Sir Toby", "Sir Toby"),
    (".hidden", "hidden"), ("a\\b", "a_b"), ("C:\\evil", "C__evil"), ("Evil\nBob", "Evil_Bob"),
    ("\u202eevil", "evil"), ("name.", "name"), ("   ", "unnamed"), ("Bob:", "Bob_"), ("日本語", "日本語"),
])
def test_safe_name(name, expected):
    got = safe_name(name)
    assert got == expected
    assert "/" not in got and "\x00" not in got and got not in ("", ".", "..") and len(got.encode()) <= 120


# ------------------------------------------------------------- control characters

@pytest.mark.parametrize("text, expected", [
    ("plain text", "plain text"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[2J\x1b[Hcleared", "cleared"),
    ("\x1b]0;evil title\x07after", "after"),
    ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1bPdevice control\x1b\\x", "x"),
    ("\x9b31mred", "red"),
    ("\x1b]unterminated\nnext", "\nnext"),
    ("bell\x07 backspace\x08 nul\x00 del\x7f", "bell backspace nul del"),
    ("\u202eevil\u202c", "evil"),
    ("\u2066isolate\u2069", "isolate"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ("tabs\tand\nnewlines kept", "tabs\tand\nnewlines kept"),
    ("emoji 👨\u200d👩\u200d👧 kept", "emoji 👨\u200d👩\u200d👧 kept"),
    ("ESC alone \x1b", "ESC alone "),
    ("\x1bc reset", " reset"),
    ("\r\nwindows", "\nwindows"),
    ("caf\u00e9 \u00e0 la cr\u00e8me", "caf\u00e9 \u00e0 la cr\u00e8me"),
])
def test_strip_controls(text, expected):
    assert strip_controls(text) == expected


@pytest.mark.parametrize("name, expected", [
    ("Evil\nBob", "Evil Bob"), ("Evil\r\nBob: hi", "Evil Bob: hi"), ("\x1b[31mBob\x1b[0m", "Bob"),
    ("Bob\u2028Alice", "Bob Alice"), ("  Bob  ", "Bob"), ("Bob\x00", "Bob"), ("\t", ""),
])
def test_clean_speaker(name, expected):
    assert clean_speaker(name) == expected


def _chat_file(fmt: str, speaker: str, text: str) -> str:
    if fmt == "telegram":
        return json.dumps({"messages": [{"type": "message", "from": speaker, "text": text},
                                        {"type": "message", "from": "Alice", "text": "ok"}]})
    if fmt == "discord":
        return json.dumps({"messages": [{"type": "Default", "author": {"name": speaker}, "content": text},
                                        {"type": "Default", "author": {"name": "Alice"}, "content": "ok"}]})
    if fmt == "sillytavern":
        return json.dumps({"user_name": "x"}) + "\n" + json.dumps({"name": speaker, "mes": text}) + "\n" + \
            json.dumps({"name": "Alice", "mes": "ok"}) + "\n"
    if fmt == "openai":
        return json.dumps({"messages": [{"role": "user", "name": speaker, "content": text},
                                        {"role": "assistant", "name": "Alice", "content": "ok"}]})
    raise ValueError(fmt)


HOSTILE_SPEAKERS = {
    "newline": ("Evil\nBob", "Evil Bob"),
    "crlf and colon": ("Evil\r\nBob: I am Bob", "Evil Bob: I am Bob"),
    "ansi": ("\x1b[31mEve\x1b[0m", "Eve"),
    "osc title": ("\x1b]0;pwned\x07Eve", "Eve"),
    "bidi": ("\u202eEve", "Eve"),
    "nul": ("Eve\x00", "Eve"),
    "surrogate": ("Eve\ud800", "Eve\ufffd"),
    "line separator": ("Evil\u2028Bob", "Evil Bob"),
}


@pytest.mark.parametrize("fmt", ["telegram", "discord", "sillytavern", "openai"])
@pytest.mark.parametrize("case", list(HOSTILE_SPEAKERS))
def test_hostile_speaker_names_are_normalized(fmt, case, tmp_path, capsys):
    raw, clean = HOSTILE_SPEAKERS[case]
    src = tmp_path / "in.json"
    src.write_text(_chat_file(fmt, raw, "hi \x1b[2Jthere\nBob: fake line"), encoding="utf-8")
    rc, stdout, _ = prepare(capsys, tmp_path, "-n", "Alice", "-t", str(src), "--format", fmt)
    assert rc == 0
    (sample,) = samples_of(tmp_path / "out.json")
    assert sample["input"] == f"{clean}:hi there Bob: fake line\nAlice:"
    listing = prepare_dataset.main(["-t", str(src), "--format", fmt, "--list_speakers"])
    out = capsys.readouterr().out
    assert listing == 0 and "\x1b" not in out and f"  {clean}\n" in out


@pytest.mark.parametrize("name", ["Bob\x1b[31m", "Bob\ud800", "\x00Bob"])
def test_hostile_name_flag(name, tmp_path, capsys):
    rc, _, error = prepare(capsys, tmp_path, "-n", name, "-t", str(TURING))
    assert (rc == 0) == (clean_speaker(name) == "Bob")


# ------------------------------------------------------------- SillyTavern flags

@pytest.mark.parametrize("value, kept", [
    (False, True), (True, False), ("false", True), ("False", True), ("true", False), ("TRUE", False),
    (0, True), (1, False), ("0", True), ("1", False), (None, True), ("", True),
])
def test_sillytavern_is_system_as_written(value, kept, tmp_path, capsys):
    src = tmp_path / "chat.jsonl"
    rows = [{"user_name": "You"}, {"name": "Alice", "mes": "hello", "is_system": False},
            {"name": "Bob", "mes": "a system note?", "is_system": value}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src))
    assert (rc == 0) == kept, error
    if kept:
        assert samples_of(tmp_path / "out.json") == [{"output": "a system note?", "input": "Alice:hello\nBob:"}]


# ------------------------------------------------------------- lone surrogates and empty samples

@pytest.mark.parametrize("fmt", ["telegram", "discord", "sillytavern", "openai"])
def test_lone_surrogates_in_a_chat_export(fmt, tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(_chat_file(fmt, "Bob", "half \ud83d of an emoji"), encoding="utf-8")  # json.dumps escapes it
    rc, _, _ = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), "--format", fmt)
    assert rc == 0
    assert samples_of(tmp_path / "out.json")[0]["output"] == "half \ufffd of an emoji"


@pytest.mark.parametrize("fmt", ["telegram", "discord", "sillytavern", "openai"])
@pytest.mark.parametrize("body", ["", "   ", "\x1b[0m", "\x00\x07", "\n\n", "\u200b", "\u3000\u200d", "\ufeff"])
def test_messages_empty_once_cleaned_make_no_sample(fmt, body, tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(_chat_file(fmt, "Bob", body), encoding="utf-8")
    rc, _, error = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), "--format", fmt)
    assert rc == 2 and "no line by 'Bob'" in error


# ------------------------------------------------------------- personal data in prepare_dataset.py

CHATS_WITH_PII = {
    "whatsapp": "12/03/2023, 14:05 - Alice: mail me at alice@example.com\n"
                "12/03/2023, 14:06 - Bob: call +44 20 7946 0958 or see https://example.org/x\n",
    "sillytavern": json.dumps({"user_name": "x"}) + "\n" + json.dumps({"name": "Alice", "mes": "mail me at alice@example.com"})
                   + "\n" + json.dumps({"name": "Bob", "mes": "call +44 20 7946 0958 or see https://example.org/x"}),
}


@pytest.mark.parametrize("fmt", list(CHATS_WITH_PII))
@pytest.mark.parametrize("flag, scrubbed", [(None, True), ("--scrub", True), ("--no-scrub", False)])
def test_chat_exports_are_scrubbed_by_default(fmt, flag, scrubbed, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(CHATS_WITH_PII[fmt])
    rc, stdout, _ = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), *([flag] if flag else []))
    assert rc == 0
    (sample,) = samples_of(tmp_path / "out.json")
    if scrubbed:
        assert sample == {"output": "call <PHONE> or see <URL>", "input": "Alice:mail me at <EMAIL>\nBob:"}
        assert "personal data replaced: 1 e-mail, 1 URL, 1 phone number" in stdout
    else:
        assert "alice@example.com" in sample["input"] and "personal data" not in stdout


@pytest.mark.parametrize("flag, scrubbed", [(None, False), ("--scrub", True), ("--no-scrub", False)])
def test_scripts_are_scrubbed_only_when_asked(flag, scrubbed, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("Alice:write to alice@example.com\nBob:fine\n")
    rc, stdout, _ = prepare(capsys, tmp_path, "-n", "Bob", "-t", str(src), *([flag] if flag else []))
    assert rc == 0
    assert samples_of(tmp_path / "out.json")[0]["input"] == \
        ("Alice:write to <EMAIL>\nBob:" if scrubbed else "Alice:write to alice@example.com\nBob:")


# ------------------------------------------------------------- hostile JSON

_MSG = '{"type": "message", "from": "Bob", "author": {"name": "Bob"}, "name": "Bob", "role": "user", '
JSON_HOSTILE = {
    "integer of 5,000 digits": '{"messages": [' + _MSG + '"text": "hi", "content": "hi", "mes": "hi", "date": '
                               + "1" * 5000 + '}]}',
    "nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
    "nested objects": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "NaN and Infinity tokens": '{"messages": [' + _MSG + '"text": "hi", "content": "hi", "mes": "hi", "date": NaN, '
                               '"timestamp": Infinity, "send_date": -Infinity}]}',
    "float overflow": '{"messages": [' + _MSG + '"text": "hi", "content": "hi", "mes": "hi", "date": 1e400, '
                      '"timestamp": 1e400}]}',
    "text is a number": '{"messages": [' + _MSG + '"text": 5, "content": 5, "mes": 5}]}',
    "truncated": '{"messages": [' + _MSG + '"text": "hi"',
    "jsonl with a bad row": '{"name": "Bob", "mes": "hi"}\n{"name": \n',
    "empty object": "{}",
    "empty list": "[]",
}


@pytest.mark.parametrize("fmt", ["auto", "telegram", "discord", "sillytavern", "openai"])
@pytest.mark.parametrize("case", list(JSON_HOSTILE))
def test_hostile_json(case, fmt, tmp_path, capsys):
    samples = prepare_text(capsys, tmp_path, JSON_HOSTILE[case], fmt)
    assert samples is None or samples[0]["output"] == "hi"

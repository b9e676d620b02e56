"""charlora.readers and prepare_dataset.py's source options: every fixture in
tests/fixtures/sources read to exact Lines, auto detection, text repair, scene
breaks, aliases, --list_speakers, --export, and random input to every reader."""
import json
import unicodedata
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prepare_dataset
from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.readers import READERS, detect_format, mark_gaps, read_source
from charlora.readers.chats import parse_time
from charlora.readers.common import DELETED, MEDIA, SYSTEM, TIMESTAMPS
from charlora.samples import build_samples, context_window, merge_aliases, parse_names
from charlora.text import strip_controls
from test_prepare import error_of, run  # the same CLI helpers: exit code, samples, one-line errors

SOURCES = Path(__file__).parent / "fixtures" / "sources"
TURING = Path(__file__).parent / "fixtures" / "turing.txt"


def L(speaker, text, brk=False):
    return Line(speaker, text, brk)


FOUNTAIN = [
    L(None, "FADE IN:"),
    L(None, "INT. LIGHTHOUSE - NIGHT", True),
    L(None, "Rain lashes the windows. MARGARET (60s, oilskin coat) trims the wick."),
    L("TOM", "Margaret! The boat's come loose!"),
    L("MARGARET", "(not looking up) Then it can find its own way home. It always does."),
    L(None, "Tom bursts in, dripping."),
    L("TOM", "You said that last winter."),
    L("MARGARET", "And was I wrong?"),
    L(None, "EXT. HARBOUR - CONTINUOUS", True),
    L("TOM", "I'm going down there."),
    L("MARGARET", "Take the lamp, then."),
    L("McCLANE", "Nobody move."),
    L(None, "FLASHBACK - THE OLD PIER", True),
    L("MARGARET", "We met on this pier, forty years ago."),
    L(None, "THE END"),
]
PLAY = [
    L(None, "THE CLOCKMAKER'S DAUGHTER"),
    L(None, "A Comedy in One Act"),
    L(None, "PERSONS OF THE PLAY"),
    L(None, "SAMUEL PRYCE, a clockmaker. MRS. PRYCE, his wife. NELL, their daughter."),
    L(None, "ACT I.", True),
    L(None, "SCENE I. A workshop. Clocks on every wall.", True),
    L(None, "_Enter SAMUEL, carrying a pendulum._"),
    L("SAMUEL", "Nell! Nell, where is the key to the long-case clock? It was here this morning, on the bench."),
    L("NELL", "[Aside.] He will find it in his pocket, as he always does. [Aloud.] Have you looked in your pocket, father?"),
    L("SAMUEL", "I have looked everywhere a key could be."),
    L("MRS. PRYCE", "Samuel, the whole street can hear you. Sit down and drink your tea."),
    L(None, "[SAMUEL finds the key in his pocket.]"),
    L("SAMUEL", "Ah."),
    L(None, "SCENE II. The same, an hour later.", True),
    L("NELL", "Every clock in the house strikes noon but ours."),
    L(None, "[_Exeunt._]"),
]
MARKDOWN = [
    L(None, "The Night Ferry", True),
    L(None, "*A short play in one scene.*"),
    L(None, "Scene 1: The deck", True),
    L(None, "*Fog. A foghorn sounds twice.*"),
    L("CAPTAIN", "Hold her steady. We're not the only ship out tonight."),
    L("Ada", "I can't see the bow from here. Can you?"),
    L("CAPTAIN", "I don't need to see it. I can hear the water."),
    L(None, "*ADA lights a lantern.*"),
    L("ADA", "Then listen harder, Captain. That isn't water."),
    L("Mate", "(running in) Ice, sir! Ice off the port side!", True),
    L(None, "**Suddenly** the lantern goes out."),
]
WHATSAPP_ANDROID = [
    L("Priya", "Morning! Who's at the plot today?"),
    L("Tom Baker", "Me, after 11 bringing the new hose and the seed trays"),
    L("Priya", "Great, I'll put the kettle on"),
    L("Tom Baker", "Leeks are in. Slugs got the lettuce again"),
    L("Priya", "Beer traps tonight then"),
]
WHATSAPP_IOS = [
    L("Mom", "Did you eat?"),
    L("Sam", "Yes mom"),
    L("Mom", "That is not a vegetable. Pizza is not a vegetable, Sam."),
    L("Sam", "ok I had a salad today"),
]
TELEGRAM = [
    L("Grandpa Joe", "Did the parcel arrive?"),
    L("Lena", "It did! Thank you. The recipe is https://example.org/strudel right?"),
    L("Grandpa Joe", "Two apples, not three. And more cinnamon."),
    L("Lena", "Made it. Too much cinnamon."),
    L("Grandpa Joe", "That's how I like it"),
]
DISCORD = [
    L("Mira", "Welcome! We're on chapter 9 this week."),
    L("Quiet Reader", "Chapter 9 already? I'm still on 7."),
    L("Mira", "No spoilers then \U0001f910"),
    L("bookbot", "Reminder: meeting Friday at 7."),
]
SILLYTAVERN = [
    L("Seraphina", "*She looks up from the fire.* You're awake. The fever broke at dawn."),
    L("Alex", "Where am I?"),
    L("Seraphina", "Glade Keep. Rest now. You are safe here."),
    L("Alex", "Good morning. Is that bread I smell?"),
]
OPENAI = [
    L("User", "Captain, the reactor is overheating."),
    L("Assistant", "Then cool it, Ensign. That's what the manual's for."),
    L("Ensign Park", "The manual's in the reactor room, sir."),
    L("Assistant", "Of course it is. Get me a fire suit."),
]

# file, the format auto must pick, exact lines, exact dropped counts
CASES = [
    ("lighthouse.fountain", "fountain", FOUNTAIN, {}),
    ("clockmaker.txt", "play", PLAY, {}),
    ("night-ferry.md", "markdown", MARKDOWN, {}),
    ("whatsapp-android.txt", "whatsapp", WHATSAPP_ANDROID, {TIMESTAMPS: 9, SYSTEM: 2, MEDIA: 1, DELETED: 1}),
    ("whatsapp-ios.txt", "whatsapp", WHATSAPP_IOS, {TIMESTAMPS: 8, SYSTEM: 2, MEDIA: 1, DELETED: 1}),
    ("telegram-result.json", "telegram", TELEGRAM, {SYSTEM: 1, MEDIA: 2}),
    ("discord-general.json", "discord", DISCORD, {SYSTEM: 2, MEDIA: 1}),
    ("sillytavern-chat.jsonl", "sillytavern", SILLYTAVERN, {SYSTEM: 1, MEDIA: 1}),
    ("openai-messages.json", "openai", OPENAI, {SYSTEM: 2, MEDIA: 1}),
]


@pytest.mark.parametrize("file, fmt, lines, dropped", CASES, ids=[c[0] for c in CASES])
def test_each_source_reads_to_exact_lines_and_auto_picks_its_reader(file, fmt, lines, dropped):
    source = read_source(SOURCES / file)
    assert (source.format, source.detected, source.encoding, source.fixed) == (fmt, True, "utf-8", 0)
    assert source.lines == lines
    assert source.dropped == Counter(dropped)
    chosen = read_source(SOURCES / file, fmt)
    assert (chosen.lines, chosen.detected) == (lines, False)


def test_auto_keeps_name_line_files_and_their_samples(tmp_path):
    for path in [TURING, *Path(__file__).parents[1].joinpath("data").glob("*.txt")]:
        assert detect_format(path.read_text(encoding="utf-8")) == "name-line", path
    out = tmp_path / "o.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(TURING), "-j", str(out)]) == 0
    explicit = tmp_path / "e.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(TURING), "-j", str(explicit), "--format", "name-line"]) == 0
    assert out.read_text(encoding="utf-8") == explicit.read_text(encoding="utf-8")


def test_cp1252_file_reads_correctly():
    source = read_source(SOURCES / "cp1252.txt")
    assert (source.format, source.encoding, source.fixed) == ("name-line", "cp1252", 0)
    assert source.lines == [
        L("Ren\u00e9e", "Caf\u00e9 cr\u00e8me, s\u2019il vous pla\u00eet \u2014 et un croissant."),
        L("Gar\u00e7on", "Tout de suite, madame. \u00c0 emporter?"),
        L("Ren\u00e9e", "Non, ici. Merci!"),
    ]


@pytest.mark.parametrize("text, encoding", [
    ("Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144. Pchn\u0105\u0107 w t\u0119 \u0142\u00f3d\u017a.\n"
     "Jan:Dzie\u0144 dobry, jak si\u0119 masz?\n", "cp1250"),
    ("Se\u00f1or:\u00bfD\u00f3nde est\u00e1 la estaci\u00f3n? Ma\u00f1ana.\n", "cp1252"),
])
def test_central_european_and_western_code_pages_are_told_apart(text, encoding):
    from charlora.dialogue import decode_dialogue

    assert decode_dialogue(text.encode(encoding)) == (text, encoding)


def test_mojibake_is_repaired_by_default_and_kept_with_no_fix_text(tmp_path, capsys):
    source = read_source(SOURCES / "mojibake.txt")
    assert source.fixed == 2
    assert source.lines == [
        L("Alice", "I wouldn\u2019t say that."),
        L("Bob", "It\u2019s a caf\u00e9 \u2014 not a restaurant."),
        L("Alice", "Fine, a caf\u00e9."),
    ]
    raw = read_source(SOURCES / "mojibake.txt", fix_text=False)
    assert raw.fixed is None
    assert raw.lines[0] == L("Alice", "I wouldn\u00e2\u20ac\u2122t say that.")

    out = tmp_path / "o.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(SOURCES / "mojibake.txt"), "-j", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == [
        {"output": "It\u2019s a caf\u00e9 \u2014 not a restaurant.", "input": "Alice:I wouldn\u2019t say that.\nBob:"}]
    assert "ftfy fixed 2 lines" in capsys.readouterr().out
    assert prepare_dataset.main(["-n", "Bob", "-t", str(SOURCES / "mojibake.txt"), "-j", str(out), "--no-fix-text"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))[0]["input"] == "Alice:I wouldn\u00e2\u20ac\u2122t say that.\nBob:"
    assert "text fixing off" in capsys.readouterr().out


def test_mojibake_in_json_exports_is_repaired_too(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Don\u00e2\u20ac\u2122t go"}]}), encoding="utf-8")
    source = read_source(path)
    assert (source.lines, source.fixed) == ([L("User", "Don\u2019t go")], 1)


# ------------------------------------------------------------------ scene breaks

@pytest.mark.parametrize("file, breaks", [
    ("whatsapp-android.txt", [3]),   # 09:21 -> 14:40
    ("whatsapp-ios.txt", [3]),       # 7:06 PM -> 8:00 AM the next day
    ("telegram-result.json", [3]),   # two days later
    ("discord-general.json", [2]),   # a day later
    ("sillytavern-chat.jsonl", [3]),  # the next morning
])
def test_long_silences_in_chats_become_breaks(file, breaks):
    lines = read_source(SOURCES / file, scene_gap_minutes=60).lines
    assert [i for i, line in enumerate(lines) if line.after_blank] == breaks
    assert not any(line.after_blank for line in read_source(SOURCES / file).lines)
    assert not any(line.after_blank for line in read_source(SOURCES / file, scene_gap_minutes=60 * 24 * 3).lines)


def test_whatsapp_times_read_day_first_and_month_first():
    assert read_source(SOURCES / "whatsapp-android.txt", scene_gap_minutes=5 * 60 + 18).lines[3].after_blank
    assert not read_source(SOURCES / "whatsapp-android.txt", scene_gap_minutes=5 * 60 + 20).lines[3].after_blank
    ios = read_source(SOURCES / "whatsapp-ios.txt", scene_gap_minutes=12 * 60 + 53).lines
    assert ios[3].after_blank  # 19:06:12 -> 08:00:00 next day is 12 h 53 min 48 s


def test_context_window_stops_at_breaks_only_when_asked():
    lines = [L("A", "1"), L("B", "2"), L("A", "3", True), L("B", "4")]
    assert list(context_window(lines, 3, 5)) == lines[:3]
    assert list(context_window(lines, 3, 5, split_scenes=True)) == lines[2:3]
    assert list(context_window(lines, 2, 5, split_scenes=True)) == []
    assert list(context_window(lines, 1, 5, split_scenes=True)) == lines[:1]
    assert build_samples(lines, "B", 5, split_scenes=True) == [
        {"output": "2", "input": "A:1\nB:"}, {"output": "4", "input": "A:3\nB:"}]


def test_split_scenes_in_a_name_line_file_cuts_at_the_blank_line(tmp_path):
    out = tmp_path / "o.json"
    assert prepare_dataset.main(["-n", "Bob", "-t", str(TURING), "-j", str(out), "--split_scenes"]) == 0
    samples = json.loads(out.read_text(encoding="utf-8"))
    assert samples[3]["input"] == ("Alice:(You can put some actions or ideas in parentheses, asterisks are also fine)Yet "
                                   "Christmas is a winter's day, and I do not think Mr. Pickwick would mind the comparison."
                                   "\nBob:")


def test_mark_gaps_ignores_unknown_times():
    lines = [L("A", "1"), L("B", "2"), L("A", "3")]
    times = [datetime(2024, 1, 1, 10), None, datetime(2024, 1, 1, 12)]
    assert mark_gaps(lines, times, 60) == [L("A", "1"), L("B", "2"), L("A", "3", True)]


@pytest.mark.parametrize("value, expected", [
    ("2024-01-06T10:02:13", datetime(2024, 1, 6, 10, 2, 13)),
    ("2024-05-01T18:01:12.345+02:00", datetime(2024, 5, 1, 16, 1, 12, 345000)),
    ("2024-05-01T18:01:12Z", datetime(2024, 5, 1, 18, 1, 12)),
    ("February 10, 2024 7:30pm", datetime(2024, 2, 10, 19, 30)),
    (1704535333, datetime(2024, 1, 6, 10, 2, 13)),
    (1704535333000, datetime(2024, 1, 6, 10, 2, 13)),
    ("1704535333", datetime(2024, 1, 6, 10, 2, 13)),
    ("yesterday", None), (None, None), (True, None), (float("inf"), None),
])
def test_parse_time(value, expected):
    assert parse_time(value) == expected


# -------------------------------------------------------- the command line

def test_screenplay_samples(tmp_path, capsys):
    code, samples = run(tmp_path, "-n", "MARGARET", "-r", "2", "-t", str(SOURCES / "lighthouse.fountain"))
    assert code == 0
    assert samples == [
        {"output": "(not looking up) Then it can find its own way home. It always does.",
         "input": "Rain lashes the windows. MARGARET (60s, oilskin coat) trims the wick.\n"
                  "TOM:Margaret! The boat's come loose!\nMARGARET:"},
        {"output": "And was I wrong?", "input": "Tom bursts in, dripping.\nTOM:You said that last winter.\nMARGARET:"},
        {"output": "Take the lamp, then.", "input": "EXT. HARBOUR - CONTINUOUS\nTOM:I'm going down there.\nMARGARET:"},
        {"output": "We met on this pier, forty years ago.",
         "input": "McCLANE:Nobody move.\nFLASHBACK - THE OLD PIER\nMARGARET:"},
    ]
    out = capsys.readouterr().out
    assert out.startswith(f"read {SOURCES / 'lighthouse.fountain'} as fountain (detected; utf-8; 15 lines; ftfy fixed 0 lines)\n")


def test_whatsapp_samples_with_split_scenes(tmp_path, capsys):
    code, samples = run(tmp_path, "-n", "Priya", "-t", str(SOURCES / "whatsapp-android.txt"), "--scene_gap_minutes", "60")
    assert code == 0
    assert samples == [
        {"output": "Morning! Who's at the plot today?", "input": "Priya:"},
        {"output": "Great, I'll put the kettle on",
         "input": "Priya:Morning! Who's at the plot today?\nTom Baker:Me, after 11 bringing the new hose and the seed trays\n"
                  "Priya:"},
        # the afternoon is a new conversation: the morning is not its context
        {"output": "Beer traps tonight then", "input": "Tom Baker:Leeks are in. Slugs got the lettuce again\nPriya:"},
    ]
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"read {SOURCES / 'whatsapp-android.txt'} as whatsapp (detected; utf-8; 5 lines; ftfy fixed 0 lines)",
        "dropped: timestamps 9, system notices 2, media placeholders 1, deleted messages 1",
        "scene breaks that end a context: 1 (new conversations and silences of 60+ minutes)",
    ]


def test_aliases_map_to_the_first_name(tmp_path, capsys):
    code, samples = run(tmp_path, "-n", "ADA, Ada", "-r", "1", "-t", str(SOURCES / "night-ferry.md"))
    assert code == 0
    assert samples == [
        {"output": "I can't see the bow from here. Can you?",
         "input": "CAPTAIN:Hold her steady. We're not the only ship out tonight.\nADA:"},
        {"output": "Then listen harder, Captain. That isn't water.", "input": "*ADA lights a lantern.*\nADA:"},
    ]
    assert "character ADA: Ada (1) + ADA (1)\n" in capsys.readouterr().out


def test_ignore_case_uses_the_spelling_the_text_uses_most():
    lines = [L("captain", "a"), L("CAPTAIN", "b"), L("Mate", "c"), L("CAPTAIN", "d")]
    renamed, name, merged = merge_aliases(lines, parse_names("Captain"), ignore_case=True)
    assert (name, merged) == ("CAPTAIN", Counter({"CAPTAIN": 2, "captain": 1}))
    assert renamed == [L("CAPTAIN", "a"), L("CAPTAIN", "b"), L("Mate", "c"), L("CAPTAIN", "d")]
    assert merge_aliases(lines, ["Captain"]) == (lines, "Captain", Counter())


@pytest.mark.parametrize("value, names", [
    ("Bob", ["Bob"]), (" Bob ,Robert,  BOB ", ["Bob", "Robert", "BOB"]), ("Sir  Toby,Sir Toby", ["Sir Toby"]),
])
def test_parse_names(value, names):
    assert parse_names(value) == names


def test_openai_export_speaks_as_assistant(tmp_path):
    code, samples = run(tmp_path, "-n", "Assistant", "-r", "1", "-t", str(SOURCES / "openai-messages.json"))
    assert code == 0
    assert samples == [
        {"output": "Then cool it, Ensign. That's what the manual's for.", "input": "User:Captain, the reactor is overheating.\nAssistant:"},
        {"output": "Of course it is. Get me a fire suit.", "input": "Ensign Park:The manual's in the reactor room, sir.\nAssistant:"},
    ]


def test_list_speakers_prints_counts_and_exits(tmp_path, capsys):
    assert prepare_dataset.main(["--list_speakers", "-t", str(SOURCES / "lighthouse.fountain"), "-j", str(tmp_path / "o.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["3 speakers:", "      4  MARGARET", "      3  TOM", "      1  McCLANE"]
    assert not (tmp_path / "o.json").exists()


def test_name_is_still_required_without_list_speakers(capsys):
    with pytest.raises(SystemExit) as exc:
        prepare_dataset.main(["-t", str(TURING)])
    assert exc.value.code == 2
    assert "the following arguments are required: -n/--name" in capsys.readouterr().err


def test_export_writes_the_same_samples_for_other_trainers(tmp_path, capsys):
    out = tmp_path / "bob.json"
    assert prepare_dataset.main(["-n", "Bob", "-r", "1", "-t", str(TURING), "-j", str(out), "--export", "openai", "sharegpt"]) == 0
    samples = json.loads(out.read_text(encoding="utf-8"))
    openai = [json.loads(row) for row in (tmp_path / "bob.openai.jsonl").read_text(encoding="utf-8").splitlines()]
    sharegpt = json.loads((tmp_path / "bob.sharegpt.json").read_text(encoding="utf-8"))
    assert openai[2] == {"messages": [{"role": "user", "content": "Alice:Would you say Mr. Pickwick reminded you of Christmas?\nBob:"},
                                      {"role": "assistant", "content": "In a way."}]}
    assert sharegpt[2] == {"conversations": [{"from": "human", "value": "Alice:Would you say Mr. Pickwick reminded you of Christmas?\nBob:"},
                                             {"from": "gpt", "value": "In a way."}]}
    assert [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in openai] == [(s["input"], s["output"]) for s in samples]
    assert [(r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in sharegpt] == [(s["input"], s["output"]) for s in samples]
    assert capsys.readouterr().out.endswith(f"exported -> {tmp_path / 'bob.openai.jsonl'}\nexported -> {tmp_path / 'bob.sharegpt.json'}\n")


def test_user_errors_are_one_line(capsys, tmp_path):
    out = str(tmp_path / "o.json")
    odd = tmp_path / "odd.json"
    odd.write_text('{"rows": [1, 2]}', encoding="utf-8")
    assert "none of the chat exports auto knows; choose one with --format" in error_of(capsys, "-n", "Bob", "-t", str(odd), "-j", out)
    assert f"{TURING} as telegram: not valid JSON" in error_of(capsys, "-n", "Bob", "-t", str(TURING), "-j", out, "--format", "telegram")
    assert "nothing the fountain reader understands" in error_of(capsys, "-n", "Bob", "-t", str(TURING), "-j", out, "--format", "fountain")
    assert "--scene_gap_minutes must be more than 0" in error_of(capsys, "-n", "Bob", "-t", str(TURING), "-j", out, "--scene_gap_minutes", "0")
    err = error_of(capsys, "-n", "Margaret", "-t", str(SOURCES / "lighthouse.fountain"), "-j", out)
    assert err.endswith("speakers found: MARGARET (4), TOM (3), McCLANE (1); closest: MARGARET\n")
    assert not Path(out).exists()


def test_a_full_telegram_export_and_openai_jsonl_start_a_conversation_per_chat(tmp_path):
    full = {"chats": {"list": [{"messages": [{"type": "message", "from": "A", "text": "one"}]},
                               {"messages": [{"type": "message", "from": "B", "text": "two"}]}]}}
    (tmp_path / "t.json").write_text(json.dumps(full), encoding="utf-8")
    assert read_source(tmp_path / "t.json").lines == [L("A", "one"), L("B", "two", True)]
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "bye"}]}]
    (tmp_path / "o.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    source = read_source(tmp_path / "o.jsonl")
    assert (source.format, source.lines) == ("openai", [L("User", "hi"), L("Assistant", "hello"), L("User", "bye", True)])


# ------------------------------------------------------- random input, every reader

def _words(text):
    return text.split()


def _no_controls(text):
    return not any((unicodedata.category(ch) == "Cc" and ch != "\t") or 0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _check(reading, source_text):
    """Every line is one line of the dialogue format (only \n and \r end one)
    with no control characters, and every word of it is in the input (once
    control characters are gone from it too).  Controls are stripped line by
    line as well, as the readers do: an escape sequence such as C1's OSC
    (\x9d) ends at a line break there, while over the whole text it would
    swallow the next line ("\x9d\r0" reads as the line "0")."""
    source_text = strip_controls(source_text) + "\n" + "\n".join(map(strip_controls, source_text.splitlines()))
    for line in reading.lines:
        assert line.text and line.text == line.text.strip() and not {"\n", "\r"} & set(line.text)
        assert _no_controls(line.text)
        assert line.speaker is None or (line.speaker and not {"\n", "\r"} & set(line.speaker))
        assert line.speaker is None or _no_controls(line.speaker)
        for word in _words(line.text):
            assert word in source_text, (word, line)
    assert reading.times is None or len(reading.times) == len(reading.lines)


# Text built from the pieces the readers look for, so random files hit their paths.
PIECES = st.sampled_from([
    "\n", "\n\n", "\r\n", " ", "  ", "BOB", "Bob", "Alice", ":", ". ", "**", "*", "_", "#", "[", "]", "(", ")", "^", "@",
    "INT. ", "EXT. ", "CUT TO:", ">", "<", "ACT I.", "SCENE 2", "MRS. ", "Enter ", "12/03/2023, 09:15 - ",
    "[3/14/24, 7:02:11\u202fPM] ", "\u200e", "<Media omitted>", "This message was deleted", "image omitted",
    "---", "/*", "*/", "[[", "]]", "~", "!", "=", "{", "}", '"', "\u2028", "\x85", "caf\u00e9", "wouldn\u00e2\u20ac\u2122t",
])
RANDOM_TEXT = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=RANDOM_TEXT, fmt=st.sampled_from(sorted(READERS)))
def test_random_text_never_breaks_a_reader(text, fmt):
    try:
        reading = READERS[fmt](text)
    except CharloraError:
        return
    _check(reading, text)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)
FIELD_VALUE = st.one_of(JSON_LEAF, st.lists(st.one_of(st.text(max_size=10), st.fixed_dictionaries(
    {"type": st.sampled_from(["plain", "bold", "text", "image_url"]), "text": st.text(max_size=10)})), max_size=3))
MESSAGE = st.dictionaries(
    st.sampled_from(["type", "from", "text", "date", "photo", "author", "content", "timestamp", "attachments", "role",
                     "name", "mes", "is_user", "is_system", "send_date", "extra"]),
    st.one_of(FIELD_VALUE, st.sampled_from(["message", "service", "Default", "Reply", "user", "assistant", "system"]),
              st.fixed_dictionaries({"name": st.text(max_size=8), "nickname": st.one_of(st.none(), st.text(max_size=8))})),
    max_size=7)
EXPORT = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=5)}),
    st.lists(MESSAGE, max_size=5),
    JSON,
)


def _strings(value):
    """The strings a JSON value holds, in document order (keys and entity
    types excluded: neither is ever spoken)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "type":
                yield from _strings(item)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=EXPORT, fmt=st.sampled_from(["telegram", "discord", "sillytavern", "openai"]), jsonl=st.booleans())
def test_random_exports_never_break_a_json_reader(data, fmt, jsonl):
    text = "\n".join(json.dumps(item) for item in data) if jsonl and isinstance(data, list) else json.dumps(data)
    try:
        reading = READERS[fmt](text)
    except CharloraError:
        return
    # Telegram joins a message's text parts, so a word may span two of them;
    # each part is cleaned of control sequences on its own (a CSI ending one
    # string must not swallow the next string's first character).
    _check(reading, "".join(strip_controls(part) for part in _strings(data)))


@pytest.mark.parametrize("fmt, text, lines", [
    # a direction inside a speech splits it; the speaker keeps the floor
    ("play", "HAMLET. O, that this too too solid flesh\n[Aside.]\nwould melt.\n",
     [L("HAMLET", "O, that this too too solid flesh"), L(None, "[Aside.]"), L("HAMLET", "would melt.")]),
    ("play", "Exit. Pursued by a bear.\nI. The first part\nTHE END.\n",
     [L(None, "Exit. Pursued by a bear."), L(None, "I. The first part THE END.")]),
    ("markdown", "**Ada**\n\nHello there.\nStill me.\n\nNarration here.\n",
     [L("Ada", "Hello there. Still me."), L(None, "Narration here.")]),
    ("markdown", "**Note** that bold words open paragraphs too.\n",
     [L(None, "**Note** that bold words open paragraphs too.")]),
    # two spaces keep a Fountain dialogue block going across an empty line
    ("fountain", "DEALER\nTen.\n  \nEleven.\n\nHe stops.\n",
     [L("DEALER", "Ten. Eleven."), L(None, "He stops.")]),
    ("fountain", "!LOUD ACTION LINE\nmore action\n\nVOICE (O.S.) (CONT'D)\nHello?\n",
     [L(None, "LOUD ACTION LINE more action"), L("VOICE", "Hello?")]),
    ("whatsapp", "12.03.23, 14:05 - Jonas: Hallo\n12.03.23, 14:06 - Jonas: Bis gleich\n13.03.23, 09:00 - Mia: Na?\n",
     [L("Jonas", "Hallo"), L("Jonas", "Bis gleich"), L("Mia", "Na?")]),
    ("openai", '[{"role": "user", "content": "hi"}, {"role": "assistant", "name": "Bob", "content": "yo"}]',
     [L("User", "hi"), L("Bob", "yo")]),
])
def test_reader_edge_cases(fmt, text, lines):
    assert READERS[fmt](text).lines == lines

"""Stage 2: speaker/line records -> context-window samples.

A sample is {"output": the character's line, "input": the `rounds` lines before
it, then the character's `Name:` prompt}.  Key names and order match the files
users already have, so old processed datasets stay usable.
"""
from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from charlora import files
from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.prompt import build_prompt


def context_window(lines: Sequence[Line], i: int, rounds: int, split_scenes: bool = False) -> Sequence[Line]:
    """The up to `rounds` lines before line i: a sample's context.

    With `split_scenes` the window starts no earlier than the last break
    (`Line.after_blank`) at or before line i, so one sample never holds two
    conversations.
    """
    if not rounds:
        return []
    start = max(0, i - rounds)
    if split_scenes:
        for j in range(i, start, -1):
            if lines[j].after_blank:
                return lines[j:i]
    return lines[start:i]


def build_samples(lines: Sequence[Line], name: str, rounds: int, split_scenes: bool = False) -> list[dict[str, str]]:
    """One sample per line spoken by `name`, with up to `rounds` lines of context.

    By default blank lines do not cut the context (the format's own sample
    continues one conversation across a blank line); `split_scenes` makes every
    break cut it.  Narration lines count as context lines.
    """
    if rounds < 0:
        raise CharloraError(f"--rounds must be 0 or more, got {rounds}")
    from charlora.text import has_visible_text

    samples = []
    for i, line in enumerate(lines):
        # a line that shows nothing would train the model to say nothing
        if line.speaker == name and has_visible_text(line.text):
            window = context_window(lines, i, rounds, split_scenes)
            samples.append({"output": line.text, "input": build_prompt(window, name)})
    return samples


def parse_names(value: str) -> list[str]:
    """`--name "Bob, Robert,BOB"` -> ["Bob", "Robert", "BOB"]: the first is the
    name the samples use, the rest are aliases that map to it."""
    from charlora.text import clean_speaker

    names = [clean_speaker(part) for part in value.split(",")]  # as the readers clean speakers
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise CharloraError(f"--name needs a character's name, got {value!r}")
    return names


def merge_aliases(lines: Sequence[Line], names: Sequence[str],
                  ignore_case: bool = False) -> tuple[list[Line], str, Counter[str]]:
    """Rename every line spoken under one of `names` to one name.

    That name is names[0]; with `ignore_case`, the spelling of names[0] the
    text uses most (`--name falstaff` on a file that says Falstaff gives
    `Falstaff:` prompts).  Returns the renamed lines, the name, and how many
    lines each spelling found in the text contributed ({"Bob": 12, "ROBERT": 3}).
    """
    key = str.casefold if ignore_case else (lambda s: s)
    wanted = {key(n) for n in names}
    merged: Counter[str] = Counter(line.speaker for line in lines
                                   if line.speaker is not None and key(line.speaker) in wanted)
    name = next((s for s, _ in merged.most_common() if key(s) == key(names[0])), names[0])
    out = [Line(name, line.text, line.after_blank) if line.speaker in merged and line.speaker != name else line
           for line in lines]
    return out, name, merged


def speaker_counts(lines: Sequence[Line]) -> Counter[str]:
    return Counter(line.speaker for line in lines if line.speaker is not None)


def missing_speaker_message(name: str, counts: Counter[str], source: str) -> str:
    """The error for a name with no lines: what was found and the closest match."""
    if not counts:
        return f"no `Name:line` dialogue lines in {source}; lines must look like `{name}:what they say`"
    found = ", ".join(f"{speaker} ({n})" for speaker, n in counts.most_common(12))
    if len(counts) > 12:
        found += f", ... ({len(counts)} speakers)"
    by_lower = {speaker.lower(): speaker for speaker in counts}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
    hint = f"; closest: {by_lower[close[0]]}" if close else ""
    return f"no line by {name!r} in {source}; speakers found: {found}{hint}"


@dataclass(frozen=True)
class Summary:
    samples: int
    speakers: int
    mean_input_chars: float
    mean_output_chars: float

    def __str__(self) -> str:
        return (
            f"{self.samples} samples written; {self.speakers} speakers seen; "
            f"mean context {self.mean_input_chars:.0f} chars, mean reply {self.mean_output_chars:.0f} chars"
        )


def summarize(samples: Sequence[dict[str, str]], counts: Counter[str]) -> Summary:
    n = len(samples)
    return Summary(
        samples=n,
        speakers=len(counts),
        mean_input_chars=sum(len(s["input"]) for s in samples) / n if n else 0.0,
        mean_output_chars=sum(len(s["output"]) for s in samples) / n if n else 0.0,
    )


# Kept here for callers that import them from samples (evaluate.py did).
write_json_atomic = files.write_json_atomic
write_text_atomic = files.write_text_atomic


def load_samples(path: str | Path) -> list[dict[str, str]]:
    """Read a processed dataset and check its shape, naming the first bad entry."""
    from charlora.dialogue import MAX_INPUT_BYTES, read_bytes_bounded
    from charlora.text import has_visible_text

    path = Path(path)
    try:
        data = json.loads(read_bytes_bounded(path, MAX_INPUT_BYTES).decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise CharloraError(f"{path} is not a valid JSON dataset: {exc}") from None
    except FileNotFoundError:
        raise CharloraError(
            f"dataset {path} not found; make it with `python prepare_dataset.py --name <character>`"
        ) from None
    except IsADirectoryError:
        raise CharloraError(f"{path} is a folder, not a dataset file (set it with --dataset_name/-d)") from None
    except UnicodeDecodeError as exc:
        raise CharloraError(f"{path} is not a valid JSON dataset: {exc}") from None
    except RecursionError:
        raise CharloraError(f"{path} is not a valid JSON dataset: nested too deeply") from None
    except OSError as exc:
        raise CharloraError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path, or an integer too long to convert
        problem = "the file name holds a NUL character" if "\0" in str(path) else str(exc).split(";")[0]
        raise CharloraError(f"cannot read {str(path)!r}: {problem}") from None
    if not isinstance(data, list) or not data:
        raise CharloraError(f"{path} must be a non-empty JSON list of {{\"output\", \"input\"}} objects")
    for i, item in enumerate(data):
        if not (isinstance(item, dict) and isinstance(item.get("input"), str) and isinstance(item.get("output"), str)):
            raise CharloraError(f"{path}: entry {i} is not an object with string \"input\" and \"output\"")
        if not has_visible_text(item["output"]):
            raise CharloraError(f"{path}: entry {i} has an empty \"output\"; there is nothing to learn from it")
        for key in ("input", "output"):
            try:
                item[key].encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CharloraError(f"{path}: entry {i}'s \"{key}\" holds an unpaired surrogate "
                                    f"(\\u{ord(item[key][exc.start]):04x}) at character {exc.start}") from None
    return data

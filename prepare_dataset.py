"""Turn a dialogue file into context-window training samples.

    python prepare_dataset.py --name Bob
    python prepare_dataset.py -n "Sir Toby Belch" -r 5 -t data/twelfth-night.txt -j toby.json
    python prepare_dataset.py -t chat.txt --list_speakers
    python prepare_dataset.py -n "Bob,Robert" --ignore_case -t chat.txt --split_scenes --export openai sharegpt

Reads `Name:line` dialogue, screenplays (Fountain), stage plays, Markdown plays
and chat exports (WhatsApp, Telegram, Discord, SillyTavern, OpenAI messages);
--format auto says which it detected.  Writes a JSON list of {"output": Bob's
line, "input": the previous --rounds lines, then "Bob:"} that lora_finetune.py
trains on.
"""
from __future__ import annotations

import argparse
import sys

from charlora import cli
from charlora.errors import CharloraError
from charlora.exports import EXPORTS, write_exports
from charlora.readers import DEFAULT_SCENE_GAP_MINUTES, FORMATS, read_source
from charlora.samples import (build_samples, merge_aliases, missing_speaker_message, parse_names, speaker_counts,
                              summarize, write_json_atomic)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--name", help="the character to learn, as the source writes it; commas give aliases "
                   "that all become the first name: \"Bob,Robert,BOB\" (required unless --list_speakers)")
    p.add_argument("-r", "--rounds", type=int, default=5, help="lines of context before each of the character's lines")
    p.add_argument("-t", "--txtfilename", default="dataset.txt", help="the dialogue file (any --format)")
    p.add_argument("-j", "--jsonfilename", default="processed_dataset.json", help="where to write the samples")
    p.add_argument("--format", default="auto", choices=FORMATS, help="the source's format; auto detects it and says which")
    p.add_argument("--ignore_case", action="store_true", help="match --name and its aliases in any case")
    p.add_argument("--list_speakers", action="store_true", help="print every speaker with line counts, then exit")
    p.add_argument("--split_scenes", action="store_true",
                   help="end a sample's context at a break: a blank line (Name:line), a scene heading (scripts, "
                        "plays), a new conversation or a long silence (chat exports)")
    p.add_argument("--scene_gap_minutes", type=float, default=None,
                   help=f"in chat exports, a silence this long is a break (implies --split_scenes; "
                        f"{DEFAULT_SCENE_GAP_MINUTES:g} when only --split_scenes is given)")
    p.add_argument("--no-fix-text", "--no_fix_text", dest="fix_text", action="store_false",
                   help="keep mojibake (`wouldnâ€™t`) as it is instead of repairing it with ftfy")
    p.add_argument("--export", nargs="+", default=[], choices=list(EXPORTS),
                   help="also write the samples beside --jsonfilename as OpenAI messages JSONL "
                        "(<name>.openai.jsonl) and/or ShareGPT JSON (<name>.sharegpt.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.name is None and not args.list_speakers:
        parser.error("the following arguments are required: -n/--name")
    return cli.run(lambda: prepare(args))


def prepare(args) -> int:
    split = args.split_scenes or args.scene_gap_minutes is not None
    gap = args.scene_gap_minutes if args.scene_gap_minutes is not None else DEFAULT_SCENE_GAP_MINUTES
    if args.scene_gap_minutes is not None and args.scene_gap_minutes <= 0:
        raise CharloraError(f"--scene_gap_minutes must be more than 0, got {args.scene_gap_minutes:g}")
    source = read_source(args.txtfilename, args.format, args.fix_text, gap if split else None)
    if args.list_speakers:
        print(source.describe())
        counts = speaker_counts(source.lines)
        print(f"{len(counts)} speakers:")
        for speaker, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f"{n:7d}  {speaker}")
        return 0
    names = parse_names(args.name)
    lines, name, merged = merge_aliases(source.lines, names, args.ignore_case)
    samples = build_samples(lines, name, args.rounds, split_scenes=split)
    if not samples:
        raise CharloraError(missing_speaker_message(", ".join(names), speaker_counts(source.lines), args.txtfilename))
    write_json_atomic(samples, args.jsonfilename)
    exported = write_exports(samples, args.jsonfilename, args.export)
    print(source.describe())
    if len(names) > 1 or args.ignore_case:
        spellings = " + ".join(f"{speaker} ({n})" for speaker, n in merged.most_common())
        print(f"character {name}: {spellings}{' (case ignored)' if args.ignore_case else ''}")
    if split:
        breaks = sum(line.after_blank for line in lines[1:])
        print(f"scene breaks that end a context: {breaks} (in chats, silences of {gap:g}+ minutes)")
    print(f"{summarize(samples, speaker_counts(lines))} -> {args.jsonfilename}")
    for path in exported:
        print(f"exported -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

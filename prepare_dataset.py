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

from charlora.errors import CharloraError
from charlora.exports import EXPORTS, write_exports
from charlora.readers import DEFAULT_SCENE_GAP_MINUTES, FORMATS, read_source
from charlora.source import source_path, source_record
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
    p.add_argument("--report", metavar="MODEL",
                   help="also print the data report lora_finetune.py prints before training (cut contexts, duplicates, "
                        "the character's share, the held-out slice), counting tokens with this model's tokenizer "
                        "(a folder in the models folder)")
    p.add_argument("--cutoff_len", type=int, default=256, help="with --report: the training --cutoff_len to check against")
    p.add_argument("--export", nargs="+", default=[], choices=list(EXPORTS),
                   help="also write the samples beside --jsonfilename as OpenAI messages JSONL "
                        "(<name>.openai.jsonl) and/or ShareGPT JSON (<name>.sharegpt.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.name is None and not args.list_speakers:
        parser.error("the following arguments are required: -n/--name")
    split = args.split_scenes or args.scene_gap_minutes is not None
    gap = args.scene_gap_minutes if args.scene_gap_minutes is not None else DEFAULT_SCENE_GAP_MINUTES
    try:
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
        if args.report:  # an unknown model is an error before anything is written
            from charlora import models

            models.find_model(models.resolve_dir(None, "models")[0], args.report)
        names = parse_names(args.name)
        lines, name, merged = merge_aliases(source.lines, names, args.ignore_case)
        samples = build_samples(lines, name, args.rounds, split_scenes=split)
        if not samples:
            raise CharloraError(missing_speaker_message(", ".join(names), speaker_counts(source.lines), args.txtfilename))
        write_json_atomic(samples, args.jsonfilename)
        # every line, for held-out tails, other speakers' samples and the data report (charlora.source)
        write_json_atomic(source_record(lines, name, args.rounds, split), source_path(args.jsonfilename))
        exported = write_exports(samples, args.jsonfilename, args.export)
    except CharloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    if args.report:
        try:
            for line in report_lines(args.report, samples, lines, name, args.rounds, split, args.cutoff_len):
                print(line)
        except CharloraError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def report_lines(model_name: str, samples, lines, name: str, rounds: int, split: bool, cutoff_len: int) -> list[str]:
    """The data report with the default held-out slice, as training will print it."""
    from charlora import models
    from charlora.source import Source, data_report
    from charlora.tokens import token_lengths
    from charlora.train import held_out_size

    tokenizer = models.load_tokenizer(models.find_model(models.resolve_dir(None, "models")[0], model_name))
    report = data_report(samples, token_lengths(tokenizer, samples), cutoff_len, held_out_size(len(samples), None),
                         Source(name, rounds, split, list(lines)))
    return report.lines(cutoff_len)


if __name__ == "__main__":
    sys.exit(main())

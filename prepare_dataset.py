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
import math
import sys
from collections import Counter

from charlora import scrub
from charlora import cli
from charlora.errors import CharloraError
from charlora.exports import EXPORTS, export_files, export_paths
from charlora.files import check_outputs, json_text, write_texts_atomic
from charlora.readers import CHAT_FORMATS, DEFAULT_SCENE_GAP_MINUTES, FORMATS, read_source
from charlora.source import source_path, source_record
from charlora.samples import (build_samples, merge_aliases, missing_speaker_message, parse_names, speaker_counts,
                              summarize)


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
    p.add_argument("--models_dir", help="with --report: the models folder (default: models/, or user_data/models/ of a "
                                        "text-generation-webui install)")
    p.add_argument("--scrub", action=argparse.BooleanOptionalAction, default=None,
                   help="replace e-mails, phone numbers, URLs, card numbers, IBANs and @handles with <EMAIL>, "
                        "<PHONE>, ... (default: on for chat exports, off for scripts and plays)")
    p.add_argument("--phone_region", default=scrub.DEFAULT_REGION,
                   help="with --scrub: the country whose numbers are written without a +country code")
    p.add_argument("--export", nargs="+", default=[], choices=list(EXPORTS),
                   help="also write the samples beside --jsonfilename as OpenAI messages JSONL "
                        "(<name>.openai.jsonl) and/or ShareGPT JSON (<name>.sharegpt.json)")
    return p


# A context longer than this holds whole conversations per sample, and the
# dataset grows with rounds x lines; no model's window wants more.
MAX_ROUNDS = 1000
# Nineteen years: past any chat's life, and well inside what datetime can add.
MAX_SCENE_GAP_MINUTES = 1e7
# Longer than any model's context window today.
MAX_CUTOFF_LEN = 1_000_000


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in range, before any file is touched."""
    if not 0 <= args.rounds <= MAX_ROUNDS:
        raise CharloraError(f"--rounds must be between 0 and {MAX_ROUNDS}, got {args.rounds}")
    gap = args.scene_gap_minutes
    if gap is not None and not (math.isfinite(gap) and 0 < gap <= MAX_SCENE_GAP_MINUTES):
        raise CharloraError(f"--scene_gap_minutes must be more than 0 and at most {MAX_SCENE_GAP_MINUTES:g}, got {gap:g}")
    if not 8 <= args.cutoff_len <= MAX_CUTOFF_LEN:  # as lora_finetune.py checks it
        raise CharloraError(f"--cutoff_len must be between 8 and {MAX_CUTOFF_LEN} tokens, got {args.cutoff_len}")
    args.phone_region = scrub.check_region(args.phone_region)


def say(text: str, file=None) -> None:
    """Print what came from a file or the command line without its escape
    sequences (a speaker named `\\x1b]0;...` must not retitle the terminal)."""
    from charlora.text import strip_controls

    print(strip_controls(text), file=file)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.name is None and not args.list_speakers:
        parser.error("the following arguments are required: -n/--name")
    return cli.run(lambda: prepare(args))


def prepare(args) -> int:
    split = args.split_scenes or args.scene_gap_minutes is not None
    gap = args.scene_gap_minutes if args.scene_gap_minutes is not None else DEFAULT_SCENE_GAP_MINUTES
    try:
        check_flags(args)
        if not args.list_speakers:
            # Every destination checked before the input is even read: none
            # may be the input, and one refused must not leave others written.
            check_outputs([args.jsonfilename, source_path(args.jsonfilename),
                           *export_paths(args.jsonfilename, args.export).values()], inputs=[args.txtfilename])
        source = read_source(args.txtfilename, args.format, args.fix_text, gap if split else None)
        if args.list_speakers:
            say(source.describe())
            counts = speaker_counts(source.lines)
            print(f"{len(counts)} speakers:")
            for speaker, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                say(f"{n:7d}  {speaker}")
            return 0
        if args.report:  # an unknown model is an error before anything is written
            from charlora import models

            report_model = models.find_model(models.resolve_dir(args.models_dir, "models")[0], args.report)
        names = parse_names(args.name)
        lines, name, merged = merge_aliases(source.lines, names, args.ignore_case)
        scrubbing = args.scrub if args.scrub is not None else source.format in CHAT_FORMATS
        scrubbed = Counter()
        if scrubbing:
            lines = scrub.scrub_lines(lines, args.phone_region, scrubbed)
        samples = build_samples(lines, name, args.rounds, split_scenes=split)
        if not samples:
            raise CharloraError(missing_speaker_message(", ".join(names), speaker_counts(source.lines), args.txtfilename))
        exports = export_files(samples, args.jsonfilename, args.export)
        # The samples, every line beside them (for held-out tails, other speakers'
        # samples and the data report: charlora.source) and the exports, all or
        # none: a full disk left new samples beside an old .source.json.
        write_texts_atomic([(json_text(samples), args.jsonfilename),
                            (json_text(source_record(lines, name, args.rounds, split)), source_path(args.jsonfilename)),
                            *exports])
        exported = [path for _, path in exports]
    except CharloraError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    say(source.describe())
    if len(names) > 1 or args.ignore_case:
        spellings = " + ".join(f"{speaker} ({n})" for speaker, n in merged.most_common())
        say(f"character {name}: {spellings}{' (case ignored)' if args.ignore_case else ''}")
    if split:
        breaks = sum(line.after_blank for line in lines[1:])
        what = (f"new conversations and silences of {gap:g}+ minutes" if source.format in CHAT_FORMATS
                else "blank lines and scene headings")  # a play has no silences to speak of
        print(f"scene breaks that end a context: {breaks} ({what})")
    if scrubbing:
        say(f"personal data replaced: {scrub.describe(scrubbed)}" + ("" if args.scrub else
                                                                   " (on for chat exports; --no-scrub turns it off)"))
    say(f"{summarize(samples, speaker_counts(lines))} -> {args.jsonfilename}")
    for path in exported:
        say(f"exported -> {path}")
    if args.report:
        try:
            for line in report_lines(report_model, samples, lines, name, args.rounds, split, args.cutoff_len):
                say(line)
        except CharloraError as exc:
            say(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def report_lines(model_path, samples, lines, name: str, rounds: int, split: bool, cutoff_len: int) -> list[str]:
    """The data report with the default held-out slice, as training will print it."""
    from charlora import models
    from charlora.source import Source, data_report
    from charlora.tokens import token_lengths
    from charlora.train import held_out_size

    tokenizer = models.load_tokenizer(model_path)
    report = data_report(samples, token_lengths(tokenizer, samples), cutoff_len, held_out_size(len(samples), None),
                         Source(name, rounds, split, list(lines)))
    return report.lines(cutoff_len)


if __name__ == "__main__":
    sys.exit(main())

"""Turn a `Name:line` dialogue file into context-window training samples.

    python prepare_dataset.py --name Bob
    python prepare_dataset.py -n "Sir Toby Belch" -r 5 -t data/twelfth-night.txt -j toby.json

Writes a JSON list of {"output": Bob's line, "input": the previous --rounds
lines, then "Bob:"} that lora_finetune.py trains on.
"""
from __future__ import annotations

import argparse
import sys

from charlora.dialogue import read_dialogue_file
from charlora.errors import CharloraError
from charlora.samples import build_samples, missing_speaker_message, speaker_counts, summarize, write_json_atomic


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--name", required=True, help="the character to learn, exactly as written before the colon")
    p.add_argument("-r", "--rounds", type=int, default=5, help="lines of context before each of the character's lines")
    p.add_argument("-t", "--txtfilename", default="dataset.txt", help="raw dialogue, one `Name:line` a line")
    p.add_argument("-j", "--jsonfilename", default="processed_dataset.json", help="where to write the samples")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        name = " ".join(args.name.split())
        lines, encoding = read_dialogue_file(args.txtfilename)
        counts = speaker_counts(lines)
        samples = build_samples(lines, name, args.rounds)
        if not samples:
            raise CharloraError(missing_speaker_message(name, counts, args.txtfilename))
        write_json_atomic(samples, args.jsonfilename)
    except CharloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"read {args.txtfilename} ({encoding}, {len(lines)} lines)")
    print(f"{summarize(samples, counts)} -> {args.jsonfilename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

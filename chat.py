"""Chat in the terminal with the character an adapter has learned.

    python chat.py -m SmolLM2-135M-Instruct -l toby --name "Sir Toby Belch" --user Maria
    python chat.py -m SmolLM2-135M-Instruct -l toby --name "Sir Toby Belch" --say "Good morrow"
    printf 'Hello\\nHow are you?\\n' | python chat.py -m SmolLM2-135M-Instruct -l toby -n Bob --json

You speak as --user, the model answers as --name.  Prompts are the last
--rounds lines of the conversation in the `Name:line` shape the adapter was
trained on; a reply ends at end-of-sequence, at a newline, or before the model
starts another speaker's `Name:`.  Commands: /reset, /save FILE, /load FILE,
/quit.  With stdin not a terminal, every input line is one turn and every reply
one output line.
"""
from __future__ import annotations

import argparse
import sys

from charlora.errors import CharloraError


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--model_name", required=True, help="base model folder inside the models folder")
    p.add_argument("-l", "--lora_name", action="extend", nargs="+",
                   help="adapter folder(s) inside the loras folder (or paths); several are applied together; omit: base model only")
    p.add_argument("--lora_scale", type=float, nargs="+",
                   help="multiply each adapter's effect (1: as trained, 0: off); one factor for all or one per adapter")
    p.add_argument("-n", "--name", required=True, help="the character who answers, as written before the colon")
    p.add_argument("-u", "--user", default="You", help="the name you speak as")
    p.add_argument("-r", "--rounds", type=int, default=5, help="lines of conversation in each prompt (as in prepare_dataset.py)")
    p.add_argument("--say", help="say this one line, print the reply and exit")
    p.add_argument("--json", action="store_true", help='print each reply as {"user", "reply", "ended_by"} JSON')
    p.add_argument("--max_new_tokens", type=int, default=120, help="longest reply in tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling: keep the likeliest tokens up to this probability")
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="above 1 discourages repeating the prompt's tokens")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (deterministic)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], default="auto",
                   help="auto: 16-bit when the model fits in memory, else 8-bit")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="auto: bf16 on CPU and recent GPUs, fp16 on older GPUs")
    p.add_argument("--models_dir", help="models folder (default: models/ or user_data/models/)")
    p.add_argument("--loras_dir", help="adapters folder (default: loras/ or user_data/loras/)")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped inside the model folder to run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from charlora.chat import run

    try:
        return run(args, sys.stdin, sys.stdout, sys.stderr)
    except CharloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

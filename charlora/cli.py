"""What every top-level script shares: the loading flags and the exit handling.

Each script is a parser plus one call:

    def main(argv=None) -> int:
        args = make_parser().parse_args(argv)
        return cli.run(lambda: do_the_work(args))

A CharloraError (a mistake the user can fix) becomes one line `error: ...`
and exit status 2; Ctrl-C becomes `interrupted` and 130.  No traceback for
either.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from charlora.config import LoadConfig
from charlora.errors import CharloraError, OutputFailed
from charlora.reply import Sampling

USER_ERROR = 2
INTERRUPTED = 130


def parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser described by the first line of the script's docstring, showing defaults."""
    return argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_loading_flags(p: argparse.ArgumentParser, defaults: LoadConfig = LoadConfig()) -> None:
    """-m/--model_name and the flags of models.load_for_inference, as every script spells them."""
    g = p.add_argument_group("model loading")
    g.add_argument("-m", "--model_name", required=True, help="base model folder inside the models folder")
    g.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], default=defaults.quantization,
                   help="auto: 16-bit when the model fits in memory, else 8-bit")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=defaults.dtype,
                   help="auto: bf16 on CPU (5x faster than fp32 here) and recent GPUs, fp16 on older GPUs")
    g.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped inside the model folder to run")
    g.add_argument("--allow_pickle", action="store_true",
                   help="load pickle (.bin) weights, which can run code; only safetensors otherwise")
    g.add_argument("--models_dir", default=defaults.models_dir,
                   help="models folder (default: models/, or user_data/models/ of a text-generation-webui install)")
    g.add_argument("--loras_dir", default=defaults.loras_dir,
                   help="adapters folder (default: loras/, or user_data/loras/ of a text-generation-webui install)")


SAMPLING_HELP = {
    "max_new_tokens": (int, "longest reply in tokens"),
    "temperature": (float, "sampling temperature (0: greedy)"),
    "top_p": (float, "nucleus sampling: keep the likeliest tokens up to this probability"),
    "repetition_penalty": (float, "above 1 discourages repeating the prompt's tokens"),
    "no_repeat_ngram_size": (int, "never repeat an n-gram of this many tokens, prompt included (0: off)"),
    "reply_ngram_block": (int, "never let a reply repeat a token n-gram of its own (0: off); stops greedy loops "
                               "while the reply may still echo the prompt"),
}


def add_sampling_flags(p: argparse.ArgumentParser, defaults: Sampling, names: Sequence[str]) -> None:
    """The reply.Sampling flags in `names` (and --greedy), defaults from `defaults`."""
    g = p.add_argument_group("replies")
    for name in names:
        if name == "greedy":
            g.add_argument("--greedy", action="store_true", help="always take the likeliest token (deterministic)")
        else:
            kind, text = SAMPLING_HELP[name]
            g.add_argument(f"--{name}", type=kind, default=getattr(defaults, name), help=text)


def run(call: Callable[[], int], interrupted: str = "\ninterrupted",
        errors: dict[type[CharloraError], tuple[str, int]] | None = None) -> int:
    """call() -> its exit status, with the user's errors and Ctrl-C turned into one line each.

    `errors` maps CharloraError subclasses to (prefix, status) when one needs
    its own (training's checkpointed Ctrl-C: ("interrupted", 130)).
    """
    try:
        return call()
    except CharloraError as exc:
        prefix, status = next(((p, s) for kind, (p, s) in (errors or {}).items() if isinstance(exc, kind)),
                              ("error", USER_ERROR))
        print(f"{prefix}: {exc}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED


class GuardedOutput:
    """A text stream whose failed writes are OutputFailed, one `error:` line,
    instead of an OSError traceback (`chat.py > /dev/full`, `| head -1`).
    After a failure the file descriptor is pointed at /dev/null, so that the
    interpreter's last flush of the same buffer can't print a second complaint."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):  # isatty, fileno, encoding...: the stream's own
        return getattr(self.stream, name)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            try:
                fd = self.stream.fileno()
            except (OSError, ValueError, AttributeError):
                fd = None  # not a file (a test's StringIO): nothing will flush it at exit
            if fd is not None:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            raise OutputFailed(f"cannot write to standard output ({exc.strerror or exc}); stopped") from None

    def write(self, text: str) -> int:
        return self._guard(self.stream.write, text)

    def flush(self) -> None:
        self._guard(self.stream.flush)


def exit_process(status: int) -> NoReturn:
    """sys.exit(status), except in one process of a multi-process run (torchrun,
    accelerate launch: WORLD_SIZE > 1), which flushes its output and ends at
    once (os._exit), skipping the interpreter's shutdown.  There the gloo
    process group's worker threads still hold their last collective's tensors
    and need the GIL to free them: at shutdown that aborts the process
    (SIGABRT, "terminate called without an active exception", after the
    adapter was saved; torchrun then fails the run), and destroying the group
    before shutdown deadlocked instead (the thread freeing it holds the GIL
    while it joins them).  Both seen with torch 2.13 on CPU.  Every file the
    run writes is closed by then."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

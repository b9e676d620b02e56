class CharloraError(Exception):
    """A problem the user can fix (bad flag, missing file, ...).

    The command-line scripts print it as one line and exit with status 2, so a
    user never sees a traceback for their own mistake.
    """


class ContextTooLong(CharloraError):
    """A line longer than the model reads: the server's one error that is the
    request's own (OpenAI's context_length_exceeded); others are the server's."""


class OutputFailed(CharloraError):
    """Standard output refused a write (a full disk behind `> file`, a closed
    pipe): the run ends with one line, as no later reply could reach the user."""


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, or None when `exc` is not a failed write.  On a full
    disk torch.save raises RuntimeError from its zip writer ("[enforce fail at
    inline_container.cc:...] . unexpected pos"), safetensors its own
    SafetensorError and tokenizers a plain Exception, not OSError: tracebacks,
    where training and merge_lora.py promised a line."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ == "SafetensorError" or (
            isinstance(exc, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)):
        return text
    # the tokenizers library (Rust) raises a bare Exception: "No space left on device (os error 28)"
    if type(exc) is Exception and "(os error " in text:
        return text
    return None


def quiet_libraries(progress_bars: bool = True) -> None:
    """Keep the terminal for what the user asked for.

    bitsandbytes logs at import, on CPUs with AVX512-bf16, that an optional
    kernel from a model hub is missing (it can't be fetched offline and the
    built-in fallback is used); PEFT and transformers raise FutureWarnings
    about their own internals.  Neither is actionable for a user.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not progress_bars:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

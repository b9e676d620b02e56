class CharloraError(Exception):
    """A problem the user can fix (bad flag, missing file, ...).

    The command-line scripts print it as one line and exit with status 2, so a
    user never sees a traceback for their own mistake.
    """


class ContextTooLong(CharloraError):
    """A line longer than the model reads: the server's one error that is the
    request's own (OpenAI's context_length_exceeded); others are the server's."""


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

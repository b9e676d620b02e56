class CharloraError(Exception):
    """A problem the user can fix (bad flag, missing file, ...).

    The command-line scripts print it as one line and exit with status 2, so a
    user never sees a traceback for their own mistake.
    """

"""Errors that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (a bad argument, a missing file, an existing output).

    The message must say what is wrong and how to fix it, in one line.
    """

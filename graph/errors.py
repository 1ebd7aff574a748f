"""Errors a user can fix (a bad file, key or checkpoint): scripts print their one-line message and exit 2."""


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class DataError(UserError):
    """A data file that cannot be read as an event stream; the message names the file and row/column."""


def one_line(text: object) -> str:
    """Collapse a (library) message onto one line, so it fits the one-line error convention."""
    return " ".join(str(text).split())

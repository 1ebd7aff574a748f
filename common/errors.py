"""Errors a user can fix (a bad file, key, config or checkpoint): scripts print their one-line message and exit 2.
Every such error type lives here, so any package can raise or catch it without importing another."""
import re



class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class DataError(UserError):
    """A data file that cannot be read as an event stream; the message names the file and row/column."""


class ConfigError(UserError):
    """A config file or override that cannot describe a valid run."""


class NonFiniteLossError(UserError):
    """Training diverged: the loss is NaN or infinite."""


class PluginError(UserError):
    """A plugin named by a config that cannot be found."""


class LaunchError(UserError):
    """`--distributed` without the environment `torchrun` sets up."""


class CheckpointError(UserError):
    """A checkpoint or saved store state that cannot be loaded: missing, corrupt, from another run or shape."""


class OutputError(UserError):
    """A path the project will not write: a symbolic link, not a regular file, in a missing folder, or an
    existing file the user did not ask to replace (see common/files.py)."""


class RegistryError(UserError, ValueError):
    """A name no part is registered under, or a name two parts claim (also a `ValueError`: a bad value)."""


def one_line(text: object) -> str:
    """Collapse a (library) message onto one line, so it fits the one-line error convention."""
    return " ".join(str(text).split())


SHOWN_CHARS = 80  # how much of a value from a file, an option or a library an error message shows by default
PATH_CHARS = 160  # how much of a path or name as the user typed it an error message shows
_LINE_BREAKING = re.compile(r"[^\S ]")  # whitespace other than a space: line breaks, tabs


def shorten(text: str, limit: int = SHOWN_CHARS, keep_end: bool = False) -> str:
    """`text` (a value, name or message from a file, an option or a library) for a one-line error message:
    at most `limit` characters, a cut marked with '...' where the text starts (or, with `keep_end`, where it
    ends: the useful end of a path), and any line break or tab a space. Costs O(limit) however long `text` is."""
    if len(text) > limit:
        text = "..." + text[-(limit - 3):] if keep_end else text[:limit - 3] + "..."
    return _LINE_BREAKING.sub(" ", text)

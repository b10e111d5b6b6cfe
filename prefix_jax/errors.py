"""The one base class of errors a user fixes by changing an input.

Every such error (a config field out of range, a malformed data file, a checkpoint
made for another run or damaged on disk, an adapter for another model) derives
from `UserError`, and its message is one line that names the field, file or step
and says what to do. `main` prints that line alone, without a traceback, and
exits 1; any other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input; the message names it and the fix."""


class ConfigError(UserError):
    """A config field holds a value outside its allowed range or set."""

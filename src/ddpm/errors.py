"""Exceptions for mistakes a user can fix.

The CLI turns any :class:`UserError` into one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """An invalid option, preset name or combination of options."""


class DataError(UserError):
    """A dataset that is missing, empty, unreadable or of the wrong shape."""


class CheckpointError(UserError):
    """A checkpoint or run directory that is missing, corrupt, truncated or would be overwritten."""

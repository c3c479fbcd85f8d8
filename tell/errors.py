"""Exception types shared by the library and the Ray jobs.

Every error a user can cause is a :class:`TellError` (a ``ValueError``), so the
command-line tool can turn it into one clear line and a non-zero exit code.
"""


class TellError(ValueError):
    """Base class of every error caused by user input (data, config, storage)."""


class TellConfigError(TellError):
    """A configuration key is unknown, has the wrong type or an impossible value."""


class TellDataError(TellError):
    """Input data is missing, empty, malformed or inconsistent."""


class TellStorageError(TellError):
    """Object storage is unreachable, refuses the credentials, or a path is unsafe."""


class TellCheckpointError(TellError):
    """A checkpoint is missing, corrupt, unsafe (pickle) or disagrees with its metadata."""


class NotFittedError(TellError, AttributeError):
    """The estimator is used before ``fit``."""


class TellCollapseError(TellError):
    """Training stopped because the learned features collapsed (see ``tell.schedule``)."""

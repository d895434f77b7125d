"""The one base class of every error a user can act on.

Each module raises its own subclass (``ParameterError``, ``DatasetError``, ``ModelError``, ...)
with a message that names the parameter or file, the value and what is allowed. The command line
catches :class:`AdvpatchError` and prints that one line; anything else is a bug and keeps its
traceback.
"""


class AdvpatchError(ValueError):
    """Bad input or an unusable resource; the message says what and how to fix it."""


class SourceError(AdvpatchError):
    """A data source (or a file a step reads: weights, a class index) is missing, empty or unreadable."""

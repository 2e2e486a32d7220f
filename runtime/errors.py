"""The project's exceptions.

Every problem a user can fix is a :class:`SkinsegError` whose message is one line naming the file or value,
the rule it broke and the fix. Only the CLI catches them: it prints the message and exits with ``exit_code``.
They live in ``runtime`` (the lowest layer) so the TensorFlow-free install has them too.
"""

from __future__ import annotations


class SkinsegError(Exception):
    """A problem the user can fix. ``str(error)`` is a one-line message."""

    exit_code = 1


class UsageError(SkinsegError):
    """Bad command-line input, config, or model file: nothing was done (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file that cannot be loaded or validated."""


class ModelError(UsageError):
    """A model file that is missing, corrupt, or not a skinseg-compatible image model."""


class DataError(UsageError):
    """A dataset that cannot be used as given (unpaired, unreadable or mis-sized files)."""


class ImageError(SkinsegError):
    """One image could not be read or processed; a batch records it and goes on."""


class MissingExtraError(UsageError):
    """An optional dependency is not installed; the message says which `pip install` fixes it."""


class ResourceError(ImageError):
    """One image could not be processed for lack of memory (or another resource of this machine): not the file's
    fault, so a batch records it and retries it on its next run."""

"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback.

Each names what the user must fix (file, line, field); anything else that escapes is a bug.
"""


class TuneforgeError(Exception):
    """Base of every error caused by the user's input rather than by tuneforge."""


class ConfigError(TuneforgeError):
    """The run configuration is malformed, has a wrong type, or an unknown key."""


class DataError(TuneforgeError):
    """A data file cannot be read or holds records that cannot be trained on."""


class ModelError(TuneforgeError):
    """A model reference cannot be resolved or loaded."""


class RunDirError(TuneforgeError):
    """The output directory conflicts with the request (existing run, nothing to resume)."""


class RewardError(TuneforgeError):
    """A reward function or grader raised, timed out, or returned something that is not one score per answer."""

"""The project's own error types: every user-facing failure is one of these."""


class FirstSpikeError(Exception):
    """Base class: a problem the user can fix; the message names it and the fix."""


class DataError(FirstSpikeError):
    """Missing, corrupt or inconsistent dataset files."""


class ConfigError(FirstSpikeError):
    """An architecture or training configuration that cannot be used."""


class CheckpointError(FirstSpikeError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""


class InputError(FirstSpikeError, ValueError):
    """Images that do not match the model (dtype or shape)."""

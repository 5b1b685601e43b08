"""Error types. A `LowbitError` is the user's to fix: the CLI prints its message on one line."""


class LowbitError(ValueError):
    """Bad input that the user can fix (config, data, checkpoint). The message says how."""


class DataError(LowbitError):
    """A dataset file is missing, corrupt or in the wrong format."""


class CheckpointError(LowbitError):
    """A checkpoint is missing, truncated, or does not match the model."""

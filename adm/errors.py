"""User-facing errors: raised for bad input, printed as one line by the command line."""


class AdmError(Exception):
    """A problem with the user's input (file, flag, label, config) that has one clear message."""


class ConfigError(AdmError, ValueError):
    """A configuration, preset name or flag that cannot be used."""


class CheckpointError(AdmError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(AdmError):
    """A data set that is missing, empty or unreadable."""

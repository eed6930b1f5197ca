"""User-facing errors: raised for bad input, printed as one line by the command line."""


class AdmError(Exception):
    """A problem with the user's input (file, flag, label, config) that has one clear message."""


class ConfigError(AdmError, ValueError):
    """A configuration, preset name or flag that cannot be used."""


class CheckpointError(AdmError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(AdmError):
    """A data set that is missing, empty or unreadable."""


def lookup(table: dict, name: str, what: str, see: str):
    """table[name]; an unknown name raises ConfigError naming the closest one and where to look."""
    if name in table:
        return table[name]
    import difflib

    close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {what} {name!r}{hint} ({see})")

"""The project's own errors. Command-line entry points catch ``VideomaskError`` (a message, exit
status 2) and let everything else keep its traceback: a bug should look like a bug.

Each subclass is also a ``ValueError``, as the errors were before this hierarchy existed, so code
that caught ``ValueError`` keeps working.
"""


class VideomaskError(Exception):
    """Bad input or configuration, explained in the message (it names the file, key or sample)."""


class ConfigError(VideomaskError, ValueError):
    """A configuration key, value or file that cannot be used."""


class DataError(VideomaskError, ValueError):
    """Shards, splits, transcripts or videos that cannot be used as given."""


class MissingError(DataError, FileNotFoundError):
    """A file, folder, shard or split that is not there (also a ``FileNotFoundError``)."""

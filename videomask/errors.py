"""The project's own errors. Command-line entry points catch ``VideomaskError`` (a message, exit
status 2; 75 for ``Unfinished``) and let everything else keep its traceback: a bug should look like a bug.

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


class Unfinished(VideomaskError):
    """A run that stopped before its end (a stop signal, ``run.stop_after``) and saved its state, met by a stage whose
    next step reads its finished model: the pipeline stops there; rerunning the same command continues it."""


#: the exit status of a command stopped by ``Unfinished``: sysexits.h's EX_TEMPFAIL ("try again later"), so that a
#: job script or a scheduler's requeue can tell "rerun me" from a refusal (2), which rerunning would only repeat
UNFINISHED_EXIT = 75


def exit_status(e: VideomaskError) -> int:
    return UNFINISHED_EXIT if isinstance(e, Unfinished) else 2


def explain_os_error(e: OSError) -> str | None:
    """A message for the file-system failures a user can fix (disk full, read-only, no permission), naming
    the file; None for other errors (they keep their traceback)."""
    import errno

    what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}.get(e.errno)
    if what is None:
        return None
    where = e.filename or "a file"
    return (f"{what} writing or reading {where} ({e.strerror}). Free space or choose a writable output folder; "
            "finished shards and checkpoints are kept, and rerunning the same command continues from them")

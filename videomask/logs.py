"""Logging for the command-line tools: ``-v`` shows more, ``-q`` less.

Library code logs through ``logging.getLogger(__name__)`` and never configures logging itself;
``setup`` is for entry points. At the default verbosity, third-party load reports (Hugging Face's
MISSING / UNEXPECTED key tables of a checkpoint loaded into another head, "some weights were not
initialised") and known-harmless warnings are silenced; ``-v`` shows them.
"""
from __future__ import annotations

import logging
import sys
import warnings

#: warnings that say nothing a videomask user can act on
HARMLESS = (
    r".*TypedStorage is deprecated.*",
    r".*upsample_bicubic2d_backward.*",
    r".*Converting a tensor with requires_grad=True to a scalar.*",
)


def quiet_third_party(verbosity: int = 0):
    """Silence Hugging Face's load reports and known-harmless warnings unless ``verbosity > 0``."""
    if verbosity > 0:
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for name in ("transformers", "huggingface_hub", "safetensors"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in HARMLESS:
        warnings.filterwarnings("ignore", message=pattern)


def setup(verbosity: int = 0):
    """Configure the ``videomask`` logger for a command line: INFO, DEBUG with ``-v``, WARNING with ``-q``."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logger = logging.getLogger("videomask")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a library that configured the root logger would print every line twice
    quiet_third_party(verbosity)


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it between tests)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 (logging must never raise into the program)
            self.handleError(record)

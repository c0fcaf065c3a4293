"""``python -m videomask COMMAND ...``: the same as the ``videomask`` command (``videomask.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m videomask``: the demo pipeline on the embedded synthetic world (``videomask.demo.pipeline``)."""
import sys

from .demo.pipeline import main

if __name__ == "__main__":
    sys.exit(main())

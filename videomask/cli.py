"""``videomask <command> ...`` (also ``python -m videomask <command> ...``): one entry point for every stage.

Each command is a module with its own ``main(argv)``; ``videomask COMMAND -h`` prints its usage and
examples and exits without doing any work. ``python -m videomask.<module>`` runs the same code.
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module, one line of help), in pipeline order
COMMANDS = {
    "world": ("videomask.demo.world", "write the synthetic clip world (two domains of videos + transcripts)"),
    "build": ("videomask.prep.build", "videos + transcripts, or text corpora -> WebDataset shards"),
    "adapters": ("videomask.prep.adapters", "TVQA, Social-IQ 2.0, DSP text classification releases -> shards"),
    "manpages": ("videomask.prep.manpages", "Debian manual pages -> a labelled technical text task + corpus"),
    "anchors": ("videomask.anchors", "difference anchors (TF-ICF, log-odds) of a target corpus against a reference"),
    "pmi": ("videomask.scoring.pmi", "high-PMI n-gram vocabulary (for pmi masking)"),
    "score": ("videomask.scoring.score", "word and patch scores against the anchors, written into the shards"),
    "truth": ("videomask.demo.truth", "the synthetic world's ground truth, for the oracle control"),
    "check": ("videomask.data", "read every sample of a shard folder as training would; list the unusable ones"),
    "inspect": ("videomask.inspection", "pictures of a sample's scores and masks"),
    "train": ("videomask.train", "(continued) pretraining with a masking strategy; torchrun for several GPUs"),
    "finetune": ("videomask.finetune", "downstream fine-tuning and evaluation (probe or full)"),
    "probe": ("videomask.probe", "zero-shot domain probe: masked words and clozes on held-out samples"),
    "experiments": ("videomask.experiments", "the ablation harness: strategies x seeds, table with CIs"),
    "demo": ("videomask.demo.pipeline", "the whole pipeline on the synthetic world (the README's main job)"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("videomask")
    except PackageNotFoundError:
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: videomask COMMAND [ARGS ...]    (or: python -m videomask COMMAND ...)", "",
             "Difference-Masking for continued pretraining of video-language transformers.", "", "commands:"]
    lines += [f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items()]
    lines += ["", "videomask COMMAND -h shows a command's options; videomask --version the version.",
              "Quick start: videomask demo"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"videomask {version()}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"videomask: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    from .errors import VideomaskError, exit_status

    try:
        return module.main(argv[1:]) or 0
    except VideomaskError as e:  # what a command did not catch itself (the demo's stages): still a message
        print(f"error: {e}", file=sys.stderr)
        return exit_status(e)
    except OSError as e:  # disk full, read-only, no permission: a message, not a traceback
        from .errors import explain_os_error

        if explain_os_error(e) is None:
            raise
        print(f"error: {explain_os_error(e)}", file=sys.stderr)
        return 2


def demo() -> int:
    """The ``videomask-demo`` script: ``videomask demo``, errors included (a message and exit status, no traceback)."""
    return main(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

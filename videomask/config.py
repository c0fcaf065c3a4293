"""Training configuration: small dataclasses, layered YAML, validated early.

Layers, later wins: the dataclass defaults -> ``configs/model/{model.preset}.yaml`` ->
the experiment YAML files given on the command line -> ``key=value`` overrides
(``optim.lr=1e-4``). An unknown key or a value of the wrong type is an error
naming it; ranges are checked by the dataclasses. The resolved configuration is
saved as ``config.yaml`` in the run folder: reproducing a run is reading one file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError  # noqa: F401  (re-exported: videomask.config.ConfigError)
from .masking import MaskingConfig
from .model import ModelConfig

#: the configs and model presets ship inside the package, so a non-editable install finds them
CONFIG_DIR = Path(__file__).resolve().parent / "configs"




@dataclass
class DataConfig:
    train: str = ""  # scored shards (a folder with manifest.json)
    train_split: str = "train"  # the split of data.train to train on
    val: str = ""  # default: the train folder
    val_split: str = ""  # "" = no validation
    anchors: str = ""  # anchors.json: the scores in the shards must come from these anchors
    ngrams: str = ""  # masking.strategy=pmi: the n-gram vocabulary (python -m videomask.scoring.pmi CORPUS --out)
    batch_size: int = 8  # per process
    max_text_len: int = 128  # tokens per transcript (longer video transcripts are cut; text-only documents windowed)
    window_stride: int = 32  # tokens shared by consecutive windows of a long text-only document
    workers: int = 0  # DataLoader worker processes
    shuffle: int = 0  # shuffle buffer (samples); 0 = shard order
    resampled: bool = False  # draw shards with replacement (multi-node): no epochs, never runs dry
    split_by: str = "shards"  # across processes: "shards" (scales) or "samples" (every process reads all)
    cache: bool = False  # keep the decoded samples in memory after the first epoch (small data; workers=0)
    # where JPEG frames are decoded: "workers" (on the CPU, in the loader's processes) or "device" (each batch in
    # the training process, on its device: nvjpeg on CUDA, which frees CPU workers when they cannot keep up)
    decode: str = "workers"
    # above this share of samples skipped as unusable (per epoch, or once 200 were read) the run stops, naming
    # the commonest reasons: a few bad samples are skipped and counted, a broken dataset is not trained on
    max_skip_fraction: float = 0.01

    def __post_init__(self):
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.batch_size < 1 or self.max_text_len < 8 or self.workers < 0 or self.shuffle < 0 or self.window_stride < 0:
            raise ConfigError("data.batch_size >= 1, data.max_text_len >= 8, data.workers, data.shuffle and "
                              "data.window_stride >= 0")
        if self.cache and (self.workers or self.resampled or self.shuffle):
            raise ConfigError("data.cache keeps one process's samples in shard order: it needs data.workers=0, "
                              "data.resampled=false and data.shuffle=0")
        if self.decode not in ("workers", "device"):
            raise ConfigError(f"data.decode must be 'workers' or 'device', got {self.decode!r}")
        if self.decode == "device" and self.split_by == "samples":
            # every process reads every sample but would decode (and find bad) only its own share: the skip
            # fraction would be diluted by the number of processes
            raise ConfigError("data.decode=device decodes in the training process: use it with data.split_by=shards")
        if self.split_by not in ("shards", "samples"):
            raise ConfigError(f"data.split_by must be 'shards' or 'samples', got {self.split_by!r}")


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate (AdamW)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.999  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and norms)
    warmup_steps: int = 0  # linear warm-up steps
    max_steps: int = 100  # optimizer steps in all
    schedule: str = "linear"  # linear or cosine decay after warm-up
    grad_accum: int = 1  # micro-batches per optimizer step
    clip: float = 1.0  # max gradient norm; 0 = off
    # what trains: [] everything; else "head" (the masked-LM head, without weights it shares with the encoder)
    # and/or parameter-name prefixes (mlm.bert.encoder.layer.5); all else is frozen. Names are checked on the model
    train: list = field(default_factory=list)
    freeze: list = field(default_factory=list)  # frozen as well: "head" or parameter-name prefixes (visual, mlm.bert)

    def __post_init__(self):
        bad = [x for x in [*self.train, *self.freeze] if not isinstance(x, str) or not x]
        if bad:
            raise ConfigError(f"optim.train and optim.freeze take 'head' or parameter-name prefixes, got {bad[0]!r}")
        if self.lr <= 0 or self.max_steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.lr > 0, optim.max_steps >= 1, optim.grad_accum >= 1, optim.warmup_steps >= 0")
        if self.clip < 0 or self.weight_decay < 0 or not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1 or self.eps <= 0:
            raise ConfigError("optim.clip >= 0 (0: off), optim.weight_decay >= 0, optim.beta1 and optim.beta2 in "
                              "[0, 1), optim.eps > 0")
        if self.schedule not in ("linear", "cosine"):
            raise ConfigError(f"optim.schedule must be 'linear' or 'cosine', got {self.schedule!r}")


@dataclass
class RunConfig:
    out: str = "runs/train"  # the run folder
    seed: int = 0  # seed of initialisation, data order and dropout
    device: str = "auto"  # auto: CUDA when available
    # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / bf16_params (bf16 weights, fp32 masters in the
    # optimiser: no per-step casts of the weights; videomask.precision)
    precision: str = "auto"
    log_every: int = 10  # steps between logged metrics
    val_every: int = 0  # steps; 0 = only at the end (when a validation split is set)
    val_batches: int = 20  # batches per validation pass
    save_every: int = 0  # steps; 0 = only at the end
    resume: str = ""  # "auto": continue from OUT's latest checkpoint
    overwrite: bool = False  # replace a different run in OUT
    stop_after: int = 0  # stop (with a checkpoint) after this many steps in this invocation: time-limited jobs
    parallel: str = "ddp"  # several processes: "ddp" (replicas), or "fsdp" (shards parameters, grads, optimizer)
    backend: str = "auto"  # several processes: auto (nccl on CUDA, gloo on CPU), nccl or gloo (several ranks on one GPU)

    def __post_init__(self):
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"run.backend must be auto, nccl or gloo, got {self.backend!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"run.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.precision not in ("auto", "fp32", "bf16", "bf16_params"):
            raise ConfigError(f"run.precision must be auto, fp32, bf16 or bf16_params, got {self.precision!r}")
        if self.precision == "bf16_params" and self.parallel == "fsdp":
            raise ConfigError("run.precision=bf16_params is for one process or DDP; with run.parallel=fsdp use "
                              "run.precision=bf16")
        if self.resume not in ("", "auto"):
            raise ConfigError(f"run.resume must be '' or 'auto', got {self.resume!r}")
        bad = [f"run.{k}={getattr(self, k)}" for k, least in (("log_every", 1), ("val_every", 0), ("val_batches", 1),
                                                              ("save_every", 0), ("stop_after", 0))
               if getattr(self, k) < least]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: log_every and val_batches must be >= 1; val_every, save_every and "
                              "stop_after >= 0 (0: off)")
        if not (self.device in ("auto", "cpu", "mps") or self.device.split(":")[0] == "cuda"):
            raise ConfigError(f"run.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _load_yaml(path: Path):
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    return OmegaConf.load(path)


def load_config(files=(), overrides=(), schema=TrainConfig):
    """Layer defaults, the preset, ``files`` and ``overrides`` into a validated ``schema``: ``TrainConfig``,
    ``videomask.finetune.FinetuneConfig`` or ``videomask.experiments.ExperimentConfig``."""
    try:
        schema = OmegaConf.structured(schema)
        layers = [_load_yaml(Path(f)) for f in files] + [OmegaConf.from_dotlist(list(overrides))]
        probe = OmegaConf.merge(schema, *layers)
        preset = probe.model.preset if "model" in probe else ""  # schemas without a model: no preset layer
        preset_file = CONFIG_DIR / "model" / f"{preset}.yaml"
        if preset and not preset_file.exists():
            known = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
            raise ConfigError(f"unknown model preset {preset!r}; known: {', '.join(known)}")
        # preset "" (fine-tuning): the architecture comes from the checkpoint
        merged = OmegaConf.merge(schema, *([_load_yaml(preset_file)] if preset else []), *layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config error{f' at {key}' if key else ''}: {msg}") from None
    except ValueError as e:  # the dataclasses' own range checks
        raise ConfigError(str(e)) from None
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(asdict(cfg)))


# -- command lines of the config-driven tools (train, finetune, experiments) -------------------------
def _field_help(cls) -> dict:
    """``{field: its trailing comment}`` from the dataclass's source: one place for the help text."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in src:
        if re.match(r"^\s+#", line):  # a comment block above a field describes it
            above.append(line.strip().lstrip("# "))
            continue
        m = re.match(r"^\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith(("def ", "return", "if ", "raise")):
            out[m.group(1)] = (m.group(2) or " ".join(above)).strip()
        above = []
    return out


def describe(schema, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every config key of ``schema`` (a dataclass or an instance: its values are the defaults shown):
    (key, type, default, help), nested sections flattened."""
    import dataclasses

    defaults = schema() if isinstance(schema, type) else schema
    rows, helps = [], _field_help(type(defaults))
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{f.name}.")
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((prefix + f.name, kind, repr(value), helps.get(f.name, "")))
    return rows


def help_text(schema, prog: str, doc: str) -> str:
    rows = describe(schema)
    width = max(len(r[0]) for r in rows)
    lines = [f"usage: {prog} [CONFIG.yaml ...] [key=value ...] [--print-config]", "", doc.strip(), "",
             "Config keys (later wins: defaults, configs/model/PRESET.yaml, the YAML files, key=value):"]
    lines += [f"  {k:<{width}}  {t:<6} {d:<22} {h}".rstrip() for k, t, d, h in rows]
    return "\n".join(lines)


def run_cli(argv, schema, run, prog: str, doc: str, default_files=lambda files, overrides: files) -> int:
    """The command line of a config-driven tool: ``-h``/``--help`` (usage, every key with its type,
    default and help, then exit 0), ``--print-config`` (the resolved config, then exit 0), else
    ``run(config)``. The project's own errors become a message and exit status 2 (75: a run stopped before its end,
    rerun to continue it); anything else keeps its traceback."""
    import logging
    import sys

    from .errors import VideomaskError, exit_status

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(schema, prog, doc))
        return 0
    show = "--print-config" in argv
    verbosity = sum(a in ("-v", "--verbose") for a in argv) - sum(a in ("-q", "--quiet") for a in argv)
    argv = [a for a in argv if a not in ("--print-config", "-v", "--verbose", "-q", "--quiet")]
    unknown = [a for a in argv if a.startswith("-")]
    if unknown:
        print(f"{prog}: unknown option {unknown[0]} (options: -h, --print-config, -v, -q; settings are key=value)",
              file=sys.stderr)
        return 2
    from .logs import setup as setup_logging

    setup_logging(verbosity)
    files = [a for a in argv if "=" not in a or a.endswith((".yaml", ".yml"))]
    overrides = [a for a in argv if a not in files]
    try:
        cfg = load_config(default_files(files, overrides), overrides, schema=schema)
        if show:
            print(to_yaml(cfg), end="")
            return 0
        run(cfg)
    except VideomaskError as e:
        logging.getLogger("videomask").debug("refused", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return exit_status(e)
    except FloatingPointError as e:  # a diverged run: the message says which checkpoint is the last finite one
        print(f"error: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        from .errors import explain_os_error

        if explain_os_error(e) is None:
            raise
        print(f"error: {explain_os_error(e)}", file=sys.stderr)
        return 2
    return 0

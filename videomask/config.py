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

from .collate import MaskingConfig
from .model import ModelConfig

#: the configs and model presets ship inside the package, so a non-editable install finds them
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    train: str = ""  # scored shards (a folder with manifest.json)
    train_split: str = "train"
    val: str = ""  # default: the train folder
    val_split: str = ""  # "" = no validation
    anchors: str = ""  # anchors.json: the scores in the shards must come from these anchors
    batch_size: int = 8  # per process
    max_text_len: int = 128
    workers: int = 0
    shuffle: int = 0  # shuffle buffer (samples); 0 = shard order
    resampled: bool = False  # draw shards with replacement (multi-node): no epochs, never runs dry
    split_by: str = "shards"  # across processes: "shards" (scales) or "samples" (every process reads all)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_text_len < 8 or self.workers < 0 or self.shuffle < 0:
            raise ConfigError("data.batch_size >= 1, data.max_text_len >= 8, data.workers and data.shuffle >= 0")
        if self.split_by not in ("shards", "samples"):
            raise ConfigError(f"data.split_by must be 'shards' or 'samples', got {self.split_by!r}")


@dataclass
class OptimConfig:
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_steps: int = 100
    schedule: str = "linear"  # linear or cosine decay after warm-up
    grad_accum: int = 1
    clip: float = 1.0  # max gradient norm; 0 = off

    def __post_init__(self):
        if self.lr <= 0 or self.max_steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.lr > 0, optim.max_steps >= 1, optim.grad_accum >= 1, optim.warmup_steps >= 0")
        if self.schedule not in ("linear", "cosine"):
            raise ConfigError(f"optim.schedule must be 'linear' or 'cosine', got {self.schedule!r}")


@dataclass
class RunConfig:
    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    log_every: int = 10
    val_every: int = 0  # steps; 0 = only at the end (when a validation split is set)
    val_batches: int = 20
    save_every: int = 0  # steps; 0 = only at the end
    resume: str = ""  # "auto": continue from OUT's latest checkpoint
    overwrite: bool = False  # replace a different run in OUT
    stop_after: int = 0  # stop (with a checkpoint) after this many steps in this invocation: time-limited jobs
    parallel: str = "ddp"  # several processes: "ddp" (replicas), or "fsdp" (shards parameters, grads, optimizer)

    def __post_init__(self):
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"run.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"run.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.resume not in ("", "auto"):
            raise ConfigError(f"run.resume must be '' or 'auto', got {self.resume!r}")


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


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(asdict(cfg)))

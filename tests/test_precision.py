"""The GPU-speed options (issue 25), checked on CPU: the patch embedding as one matrix product, and bf16
parameters with fp32 master weights in the optimiser."""
import pytest
import torch
from safetensors.torch import load_file
from test_train import common, metrics

from videomask.config import ConfigError
from videomask.finetune import load_config as finetune_config
from videomask.model import ModelConfig, VideoLanguageModel, embed_patches, load_tokenizer
from videomask.train import load_config as train_config
from videomask.train import main as train_main


def test_linear_patch_embedding_is_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, kernel_size=16, stride=16, bias=True)
    pixels = torch.randn(5, 3, 64, 96)
    ref = conv(pixels).flatten(2).transpose(1, 2)
    assert torch.allclose(embed_patches(conv, pixels), ref, atol=1e-5)
    cfg = ModelConfig()
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = VideoLanguageModel(cfg, len(tok)).eval()
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    a = model.patch_features(x)
    model.cfg = ModelConfig(patch_embed="linear")
    assert torch.allclose(model.patch_features(x), a, atol=1e-5)
    with pytest.raises(ConfigError, match="patch_embed"):
        ModelConfig(patch_embed="fft")


def test_bf16_parameters_with_fp32_masters_train_resume_and_export_fp32(scored_shards, tiny_anchors, tmp_path):
    args = ["optim.max_steps=4", "optim.warmup_steps=1", "run.precision=bf16_params"]
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "a", *args)) == 0
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "b", *args, "run.stop_after=2")) == 0
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in ckpt["model"].values() if v.is_floating_point())
    assert all(m.dtype == torch.float32 for m in ckpt["optimizer"]["master"])
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "b", *args, "run.resume=auto")) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in a.values() if v.is_floating_point())  # the masters, exported
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly, masters included
    la = metrics(tmp_path / "a")
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in la) and la[-1]["loss"] < la[0]["loss"] + 1.0
    # the masters hold updates a bf16 copy alone could not: the exported weights are not all bf16 values
    assert any(a[k].is_floating_point() and not torch.equal(a[k], a[k].bfloat16().float()) for k in a)


def test_bf16_params_refused_where_it_does_not_apply(tmp_path):
    with pytest.raises(ConfigError, match="fsdp"):
        train_config([], ["run.precision=bf16_params", "run.parallel=fsdp"])
    with pytest.raises(ConfigError, match="fine-tuning"):
        finetune_config([], ["run.precision=bf16_params"])
    with pytest.raises(ConfigError, match="run.backend"):
        train_config([], ["run.backend=mpi"])

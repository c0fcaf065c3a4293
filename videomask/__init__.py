"""videomask: Difference-Masking for continued pretraining of video-language transformers."""

__version__ = "0.1.0"

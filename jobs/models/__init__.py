"""Segmentation models: timm encoders (`encoders`), the UPerNet decoder (`upernet`) and the
`Segmenter` that joins them with the fine and hierarchical heads (`segmenter`)."""

from jobs.models.encoders import Encoder, build_encoder, cached_pretrained_file
from jobs.models.segmenter import Segmenter, build_segmenter
from jobs.models.upernet import UPerHead

__all__ = [
    "Encoder",
    "Segmenter",
    "UPerHead",
    "build_encoder",
    "build_segmenter",
    "cached_pretrained_file",
]

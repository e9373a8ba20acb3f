"""Video transformers: VideoViT trunk, MAE, classification heads, size table, FLOPs, conversion.

Importing this package needs only torch, timm and einops (the GPU benchmark relies on that);
`ppma_scale.models.convert` adds safetensors.
"""
from ppma_scale.models.build import build_classifier, build_encoder, build_mae, size_from_config
from ppma_scale.models.flops import flops_per_clip, peak_tflops
from ppma_scale.models.heads import VideoClassifier
from ppma_scale.models.mae import MAE
from ppma_scale.models.sizes import SIZES, ViTSize, resolve_size
from ppma_scale.models.vit import VideoViT, set_attention

__all__ = [
    "MAE", "SIZES", "VideoClassifier", "VideoViT", "ViTSize", "build_classifier", "build_encoder",
    "build_mae", "flops_per_clip", "peak_tflops", "resolve_size", "set_attention", "size_from_config",
]

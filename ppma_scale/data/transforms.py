"""Crops, flips and resizes of decoded clips, RandAugment per clip, and the per-batch GPU augmentations.

Train crops are chosen in the coordinates of the decoded frame: random-resized and multi-scale
crops are defined relative to the frame, so "resize the short side to 256, then crop" equals
cropping the same region of the stored frame and resizing once (one interpolation instead of two).
A view is `(box, flip)` with box = (top, left, height, width) in source pixels.

On the CPU the resize runs on uint8 frames directly (torch's antialiased uint8 kernel); on a GPU
it goes through float. Normalisation, cube random erasing and mixup/cutmix run per batch on the
training device (`normalize_video`, `BatchAugment`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # top, left, height, width
View = tuple[Box, bool]  # box, horizontal flip
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)  # VideoMAE's multi-scale crop sizes, relative to the short side


@dataclass(frozen=True)
class TrainAugment:
    """Per-clip training augmentation: crop policy, flip, RandAugment, repeated views."""

    img_size: int = 224
    short_side: int = 256
    crop: str = "random_resized"  # 'random_resized' | 'multi_scale' | 'center'
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    flip: bool = True
    randaugment: str | None = None  # timm spec, e.g. "rand-m7-n4-mstd0.5-inc1"
    repeat: int = 1  # views per decoded clip

    def __post_init__(self) -> None:
        if self.crop not in ("random_resized", "multi_scale", "center"):
            raise ValueError(f"augment.crop must be random_resized, multi_scale or center, got {self.crop!r}")
        if self.img_size < 1 or self.short_side < self.img_size:
            raise ValueError(f"data.short_side ({self.short_side}) must be >= data.img_size ({self.img_size}) >= 1")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"augment.scale must be [min, max] with 0 < min <= max <= 1, got {list(self.scale)}")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"augment.ratio must be [min, max] with 0 < min <= max, got {list(self.ratio)}")
        if self.repeat < 1:
            raise ValueError(f"data.repeat_aug must be >= 1, got {self.repeat}")


def random_resized_box(h: int, w: int, scale: Sequence[float], ratio: Sequence[float],
                       rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop choice: area fraction in `scale`, log-uniform aspect in `ratio`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the central crop with the ratio clamped into range
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def multi_scale_box(h: int, w: int, rng: np.random.Generator, max_distort: int = 1) -> Box:
    """VideoMAE's multi-scale crop: sides from MULTI_SCALES x short side, at one of 13 fixed offsets."""
    base = min(h, w)
    sizes = [int(base * s) for s in MULTI_SCALES]
    pairs = [(ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    hs, ws = (h - ch) // 4, (w - cw) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    gy, gx = grid[int(rng.integers(len(grid)))]
    return gy * hs, gx * ws, ch, cw


def centered_box(h: int, w: int, img_size: int, short_side: int) -> Box:
    """The img_size square at the centre after resizing the short side to short_side."""
    side = min(h, w, max(1, int(round(min(h, w) * img_size / short_side))))
    return (h - side) // 2, (w - side) // 2, side, side


def test_boxes(h: int, w: int, img_size: int, short_side: int, num_crops: int) -> list[Box]:
    """`num_crops` squares spread along the long side (3: start, centre, end), centred across."""
    if num_crops < 1:
        raise ValueError(f"data.test_crops must be >= 1, got {num_crops}")
    top, left, side, _ = centered_box(h, w, img_size, short_side)
    if num_crops == 1:
        return [(top, left, side, side)]
    if w >= h:
        return [(top, int(round(x)), side, side) for x in np.linspace(0, w - side, num_crops)]
    return [(int(round(y)), left, side, side) for y in np.linspace(0, h - side, num_crops)]


def train_views(h: int, w: int, aug: TrainAugment, rng: np.random.Generator) -> list[View]:
    """`aug.repeat` independent (box, flip) choices for one decoded clip."""
    views = []
    for _ in range(aug.repeat):
        if aug.crop == "random_resized":
            box = random_resized_box(h, w, aug.scale, aug.ratio, rng)
        elif aug.crop == "multi_scale":
            box = multi_scale_box(h, w, rng)
        else:
            box = centered_box(h, w, aug.img_size, aug.short_side)
        views.append((box, bool(aug.flip and rng.random() < 0.5)))
    return views


def render_views(frames: torch.Tensor | np.ndarray, views: Sequence[View], size: int) -> torch.Tensor:
    """Frames (T, H, W, 3 uint8, any device) -> views (V, 3, T, size, size uint8), one resize per view."""
    frames = torch.as_tensor(frames)
    clip = frames.permute(0, 3, 1, 2)  # T, 3, H, W (channels-last strides: the fast uint8 resize path)
    out = torch.empty((len(views), 3, frames.shape[0], size, size), dtype=torch.uint8, device=frames.device)
    for v, ((top, left, h, w), flip) in enumerate(views):
        crop = clip[:, :, top:top + h, left:left + w]
        if (h, w) != (size, size):
            if crop.device.type == "cpu":
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            else:
                crop = F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
        if flip:
            crop = crop.flip(-1)
        out[v] = crop.transpose(0, 1)
    return out


class ClipRandAugment:
    """timm RandAugment with one draw of ops and magnitudes per clip, applied to every frame alike."""

    def __init__(self, spec: str, img_size: int, mean: Sequence[float] = (0.485, 0.456, 0.406)):
        from timm.data.auto_augment import rand_augment_transform

        hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(int(round(255 * m)) for m in mean)}
        try:
            self.op = rand_augment_transform(spec, hparams)
        except (AssertionError, KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"augment.randaugment {spec!r} is not a timm RandAugment spec "
                             f"(example: rand-m7-n4-mstd0.5-inc1): {exc}") from None

    def __call__(self, clip: torch.Tensor, seed: int) -> torch.Tensor:
        """clip (3, T, H, W uint8 CPU) -> same shape; `seed` fixes the draw for the whole clip."""
        from PIL import Image

        frames = clip.permute(1, 2, 3, 0).contiguous().numpy()
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in frames:
                random.seed(seed)  # timm draws ops from numpy and magnitudes from `random`:
                np.random.seed(seed % 2**32)  # the same seeds give every frame the same draw
                out.append(np.asarray(self.op(Image.fromarray(frame))))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return torch.from_numpy(np.stack(out)).permute(3, 0, 1, 2)


def normalize_video(video: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., C, T, H, W) on any device -> (x / 255 - mean) / std in `dtype`."""
    channels = video.shape[-4]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"augment.mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    shape = (channels, 1, 1, 1)
    m = torch.tensor(mean, dtype=dtype, device=video.device).view(shape) * 255
    s = torch.tensor(std, dtype=dtype, device=video.device).view(shape) * 255
    return (video.to(dtype) - m) / s


class BatchAugment:
    """Per-batch augmentation on the training device for classification: normalise, cube random
    erasing, then timm Mixup/CutMix with label smoothing (soft targets), or plain smoothing."""

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], mixup: float = 0.0,
                 cutmix: float = 0.0, label_smoothing: float = 0.0, erase_prob: float = 0.0):
        from timm.data import Mixup

        for name, value in (("mixup", mixup), ("cutmix", cutmix), ("erase_prob", erase_prob)):
            if value < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {value}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"augment.label_smoothing must be in [0, 1), got {label_smoothing}")
        if erase_prob > 1:
            raise ValueError(f"augment.erase_prob must be <= 1, got {erase_prob}")
        self.num_classes, self.mean, self.std = num_classes, list(mean), list(std)
        self.smoothing = label_smoothing
        self.erase_prob = erase_prob
        self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                           num_classes=num_classes) if mixup > 0 or cutmix > 0 else None

    @property
    def soft_targets(self) -> bool:
        return self.mixup is not None or self.smoothing > 0

    def __call__(self, video: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, T, H, W) + int labels (B) -> normalised float video, targets (B, K) or (B)."""
        from timm.data.random_erasing import RandomErasing
        from timm.data.mixup import mixup_target

        x = normalize_video(video, self.mean, self.std)
        b, c, t, h, w = x.shape
        frames_as_channels = x.view(b, c * t, h, w)  # one box for all frames: a cube through time
        if self.erase_prob > 0:
            RandomErasing(self.erase_prob, mode="pixel", device=x.device)(frames_as_channels)
        if self.mixup is not None:
            if b % 2:
                raise ValueError(f"mixup/cutmix need an even number of clips per batch, got {b} "
                                 "(train.micro_batch x data.repeat_aug)")
            _, target = self.mixup(frames_as_channels, labels)
            return x, target
        if self.smoothing > 0:
            return x, mixup_target(labels, self.num_classes, smoothing=self.smoothing)
        return x, labels

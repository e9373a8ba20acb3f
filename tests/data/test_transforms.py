"""Crops, views, RandAugment per clip, normalisation, and the per-batch device augmentations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppma_scale.data import transforms
from ppma_scale.data.transforms import (BatchAugment, ClipRandAugment, TrainAugment, multi_scale_box,
                                        normalize_video, random_resized_box, render_views, train_views)


@settings(max_examples=80, deadline=None)
@given(h=st.integers(8, 400), w=st.integers(8, 400), lo=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_crop_boxes_lie_inside_the_frame(h, w, lo, seed):
    rng = np.random.default_rng(seed)
    for top, left, ch, cw in (random_resized_box(h, w, (lo, 1.0), (0.75, 1.333), rng), multi_scale_box(h, w, rng)):
        assert 0 <= top and 0 <= left and ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w


def test_random_resized_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [random_resized_box(256, 340, (0.25, 0.5), (0.75, 1.333), rng) for _ in range(200)]
    areas = np.array([b[2] * b[3] / (256 * 340) for b in boxes])
    ratios = np.array([b[3] / b[2] for b in boxes])
    assert 0.23 < areas.min() and areas.max() < 0.52
    assert 0.7 < ratios.min() and ratios.max() < 1.4


def test_views_crop_resize_and_flip():
    frames = torch.arange(4 * 20 * 30 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 20, 30, 3)
    views = render_views(frames, [((2, 3, 10, 10), False), ((2, 3, 10, 10), True)], 10)
    assert views.shape == (2, 3, 4, 10, 10) and views.dtype == torch.uint8
    expected = frames[:, 2:12, 3:13].permute(3, 0, 1, 2)  # same size: no resampling
    assert torch.equal(views[0], expected) and torch.equal(views[1], expected.flip(-1))
    smooth = torch.linspace(0, 255, 40).round().to(torch.uint8).view(1, 1, 40, 1).expand(2, 40, 40, 3)
    down = render_views(smooth, [((0, 0, 40, 40), False)], 20)
    assert down.shape == (1, 3, 2, 20, 20)
    pairs = smooth[0, 0, :, 0].float().view(20, 2).mean(1)
    assert (down[0, 0, 0, 0].float() - pairs).abs().max() <= 2  # a faithful (antialiased) resize
    aug = TrainAugment(img_size=16, short_side=20, repeat=4, crop="multi_scale")
    assert len(train_views(40, 60, aug, np.random.default_rng(0))) == 4


def test_three_test_crops_span_the_long_side():
    assert transforms.test_boxes(256, 455, 224, 256, 3) == [(16, 0, 224, 224), (16, 116, 224, 224), (16, 231, 224, 224)]
    assert transforms.test_boxes(455, 256, 224, 224, 1) == [(99, 0, 256, 256)]
    with pytest.raises(ValueError, match="test_crops"):
        transforms.test_boxes(10, 10, 8, 8, 0)


def test_randaugment_applies_one_draw_to_every_frame_of_a_clip():
    rng = np.random.default_rng(0)
    frame = torch.from_numpy(rng.integers(0, 255, (3, 1, 32, 32), dtype=np.uint8))
    clip = frame.expand(3, 6, 32, 32).contiguous()  # six identical frames
    augment = ClipRandAugment("rand-m9-n3-mstd0.5", img_size=32)
    changed = 0
    for seed in range(6):
        out = augment(clip, seed)
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(6))  # identical frames stay identical
        changed += int(not torch.equal(out, clip))
        assert torch.equal(out, augment(clip, seed))  # the seed fixes the draw
    assert changed >= 4
    with pytest.raises(ValueError, match="augment.randaugment"):
        ClipRandAugment("m9-n2", img_size=32)


def test_normalize_video():
    video = torch.full((2, 3, 2, 4, 4), 255, dtype=torch.uint8)
    out = normalize_video(video, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, :, 0, 0, 0], torch.tensor([2.0, 1.0, 0.5]).expand(2, 3))
    with pytest.raises(ValueError, match="augment.mean/std"):
        normalize_video(video, [0.5], [0.5])


def test_batch_augment_mixup_cutmix_erasing_and_smoothing():
    torch.manual_seed(0)
    np.random.seed(0)
    video = torch.randint(0, 255, (4, 3, 2, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    mix = BatchAugment(5, [0.5] * 3, [0.5] * 3, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    x, target = mix(video, labels)
    assert x.shape == video.shape and target.shape == (4, 5)
    assert torch.allclose(target.sum(1), torch.ones(4))
    assert (target.max(1).values < 0.95).all()  # smoothed and/or mixed
    assert not torch.allclose(x, normalize_video(video, [0.5] * 3, [0.5] * 3))  # the clips themselves are mixed
    smooth = BatchAugment(5, [0.5] * 3, [0.5] * 3, label_smoothing=0.1)
    _, soft = smooth(video, labels)
    assert torch.allclose(soft[0], torch.tensor([0.92, 0.02, 0.02, 0.02, 0.02]))
    plain, hard = BatchAugment(5, [0.5] * 3, [0.5] * 3)(video, labels)
    assert torch.equal(hard, labels) and torch.allclose(plain, normalize_video(video, [0.5] * 3, [0.5] * 3))
    erase = BatchAugment(5, [0.5] * 3, [0.5] * 3, erase_prob=1.0)
    constant = torch.full((2, 3, 4, 16, 16), 128, dtype=torch.uint8)
    erased, _ = erase(constant, labels[:2])
    changed = erased != normalize_video(constant, [0.5] * 3, [0.5] * 3)
    footprint = changed.any(dim=1)  # (B, T, H, W)
    assert footprint.any()
    assert all(torch.equal(footprint[:, 0], footprint[:, t]) for t in range(4))  # a cube: same box every frame
    with pytest.raises(ValueError, match="even number"):
        mix(video[:3], labels[:3])


MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _mixed_batch(**kw):
    """A random uint8 batch of 4 clips (labels 0..3: every clip's partner, batch.flip(0), has another
    label), its normalised unmixed version x0, and BatchAugment's output."""
    torch.manual_seed(0)
    np.random.seed(0)  # timm draws lambda (and the cutmix box) from numpy
    video = torch.randint(0, 255, (4, 3, 2, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    x0 = normalize_video(video, MEAN, STD)
    x, target = BatchAugment(5, MEAN, STD, **kw)(video, labels)
    return labels, x0, x, target


def _lambda_from(target, labels, smoothing, classes=5):
    """lambda of each row: target[i, own label] = lam * on + (1 - lam) * off, and the partner's
    label gets the rest (timm's mixup_target with label smoothing)."""
    off = smoothing / classes
    on = 1 - smoothing + off
    rows = torch.arange(len(labels))
    lam = (target[rows, labels] - off) / (on - off)
    partner = (target[rows, labels.flip(0)] - off) / (on - off)
    assert torch.allclose(lam + partner, torch.ones(len(labels)), atol=1e-5)  # one lambda splits each row
    return lam


def test_batch_mixup_blends_each_clip_with_its_partner_by_the_targets_lambda():
    labels, x0, x, target = _mixed_batch(mixup=0.8, label_smoothing=0.1)
    lam = _lambda_from(target, labels, 0.1)
    assert torch.allclose(lam, lam[0].expand(4), atol=1e-5)  # one lambda for the batch
    lam = float(lam[0])
    assert 0.05 < lam < 0.95  # this seed really mixes
    assert torch.allclose(x, lam * x0 + (1 - lam) * x0.flip(0), atol=1e-4)  # the video mixed as the target says
    assert not torch.allclose(x, x0, atol=1e-2)


def test_batch_cutmix_pastes_one_box_of_the_partner_through_every_frame():
    labels, x0, x, target = _mixed_batch(cutmix=1.0)
    lam = _lambda_from(target, labels, 0.0)
    assert torch.allclose(lam, lam[0].expand(4), atol=1e-6)
    b, c, t, h, w = x.shape
    changed = x != x0
    region = changed.any(dim=(0, 1, 2))  # (H, W): where any clip, channel or frame changed
    rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
    assert len(rows) and len(cols)  # this seed really cuts
    box = torch.zeros(h, w, dtype=torch.bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert torch.equal(region, box) and not box.all()  # one rectangle, smaller than the frame
    for frame in range(t):  # the same rectangle in every frame: a cuboid through time
        assert torch.equal(changed[:, :, frame].any(dim=(0, 1)), box)
    inside = box.expand_as(x)
    assert torch.equal(x[inside], x0.flip(0)[inside])  # the box comes from the partner clip, exactly
    assert torch.equal(x[~inside], x0[~inside])  # the rest is the clip's own
    assert float(lam[0]) == pytest.approx(1 - float(box.sum()) / (h * w), abs=1e-6)  # target = area kept

"""Frame selection and MAE masks: property tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppma_scale.data import clips
from ppma_scale.data.clips import ClipSpec, train_indices
from ppma_scale.data.masking import make_masks, running_cell_keep


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 400), fps=st.floats(5, 60), frames=st.integers(1, 16), stride=st.integers(1, 6),
       window=st.floats(0.2, 5.0), seed=st.integers(0, 2**16))
def test_clip_indices_stay_in_the_video_and_keep_their_spacing(total, fps, frames, stride, window, seed):
    rng = np.random.default_rng(seed)
    strided = train_indices(ClipSpec(frames, "stride", stride), total, fps, rng)
    assert len(strided) == frames and strided.min() >= 0 and strided.max() < total
    if (frames - 1) * stride + 1 <= total:
        assert np.all(np.diff(strided) == stride)
    windowed = train_indices(ClipSpec(frames, "window", window_s=window), total, fps, rng)
    assert len(windowed) == frames and np.all(np.diff(windowed) >= 0) and windowed.max() < total
    span = min(total, max(1, round(window * fps)))
    assert windowed[-1] - windowed[0] == (span - 1 if frames > 1 else 0)  # the whole window, first to last


def test_window_sampling_is_ppma_style_and_test_clips_spread_evenly():
    spec = ClipSpec(16, "window", window_s=2.7)
    idx = train_indices(spec, 300, 30.0, np.random.default_rng(0))
    assert idx[-1] - idx[0] == 80  # 16 frames over 81 frames = 2.7 s at 30 fps
    spread = clips.test_indices(ClipSpec(4, "stride", 2), 100, 25.0, 3)
    assert [c[0] for c in spread] == [0, 46, 93] and all(c[-1] < 100 for c in spread)
    assert clips.test_indices(ClipSpec(4, "stride", 2), 100, 25.0, 1)[0][0] == 46
    short = train_indices(ClipSpec(8, "stride", 4), 10, 25.0, np.random.default_rng(0))
    assert short.max() == 9  # a short video repeats its last frame
    with pytest.raises(ValueError, match="data.num_frames"):
        ClipSpec(0)


grids = st.tuples(st.integers(1, 8), st.integers(1, 7), st.integers(1, 7))


@settings(max_examples=60, deadline=None)
@given(grid=grids, batch=st.integers(1, 5), ratio=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_random_and_tube_masks_have_exact_counts(grid, batch, ratio, seed):
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    mask, dec = make_masks("random", batch, grid, ratio, generator=gen)
    assert dec is None and mask.dtype == torch.bool and mask.shape == (batch, t * h * w)
    assert (mask.sum(1) == round(t * h * w * ratio)).all()
    tube, _ = make_masks("tube", batch, grid, ratio, generator=gen)
    per_frame = tube.view(batch, t, h * w)
    assert (per_frame == per_frame[:, :1]).all()  # constant over time
    assert (per_frame[:, 0].sum(1) == round(h * w * ratio)).all()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["random", "tube"]), grid=grids, batch=st.integers(1, 4),
       ratio=st.floats(0.5, 0.95), dec_ratio=st.floats(0.1, 0.75), seed=st.integers(0, 1000))
def test_decoder_masks_are_exact_subsets(kind, grid, batch, ratio, dec_ratio, seed):
    t, h, w = grid
    mask, dec = make_masks(kind, batch, grid, ratio, dec_ratio, torch.Generator().manual_seed(seed))
    masked = int(mask[0].sum())
    if masked == 0:
        return
    expected = min(masked, max(1, masked - round(masked * dec_ratio)))
    assert (dec.sum(1) == expected).all()
    assert not (dec & ~mask).any()  # only masked tokens are reconstructed


def test_running_cell_prefers_the_cell_pattern_and_runs_over_time():
    grid = (4, 8, 8)
    keep = running_cell_keep(grid, 0.5).view(4, 8, 8)
    assert (keep.float().mean(dim=(1, 2)) == 0.5).all()
    assert not torch.equal(keep[0], keep[1])  # the pattern moves every time step
    assert (keep.sum(0) == 2).all()  # ... and covers every position equally often
    mask, dec = make_masks("random", 1, grid, 0.0, 0.5)
    assert dec is not None and int(dec.sum()) == 0  # nothing masked: nothing to reconstruct
    assert int(make_masks("random", 2, (1, 1, 2), 0.5, 0.75)[1].sum()) == 2  # at least one per row
    mask, dec = make_masks("tube", 3, grid, 0.75, 0.5, torch.Generator().manual_seed(0))
    in_cell = [max((row & running_cell_keep(grid, 0.5, phase=torch.tensor([p]))[0]).sum() / row.sum()
                   for p in range(4)) for row in dec]
    assert all(share > 0.8 for share in in_cell)  # each row follows one phase of the running cell
    assert not (dec & ~mask).any()  # only masked tokens are reconstructed
    assert (mask.sum(1) == 4 * 48).all() and (dec.sum(1) == 96).all()  # 75% of 4x8x8; half of those kept
    tubes = mask.view(3, 4, 64)
    assert all(torch.equal(tubes[:, 0], tubes[:, t]) for t in range(4))  # tube: the same positions every step


def test_every_position_is_reconstructed_equally_often_over_samples():
    """Rows start the running cell at random phases (VideoMAE V2): with one fixed phase, half of the
    positions were almost never reconstructed (0.3% of samples against 90% for the others)."""
    grid = (4, 8, 8)
    mask, dec = make_masks("random", 4000, grid, 0.9, 0.5, torch.Generator().manual_seed(0))
    share = dec.float().mean(0) / mask.float().mean(0)  # reconstructed, of the times a position was masked
    assert share.min() > 0.4 and share.max() < 0.6, (share.min(), share.max())


def test_mask_errors_name_the_setting():
    with pytest.raises(ValueError, match="mae.mask_ratio"):
        make_masks("random", 2, (2, 2, 2), 1.0)
    with pytest.raises(ValueError, match="mae.mask_type"):
        make_masks("block", 2, (2, 2, 2), 0.5)
    with pytest.raises(ValueError, match="decoder_mask_ratio"):
        make_masks("random", 2, (2, 2, 2), 0.5, 1.0)

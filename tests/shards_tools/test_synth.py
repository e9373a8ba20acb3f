"""synth: three procedural corpora, deterministic, in the PPMA split format."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from shards_tools import synth
from shards_tools.figures import ACTIONS, skeleton
from shards_tools.synth import CLASS_NAMES, ClipSpec, render_clip, render_corpus
from shards_tools.videoio import decode_video


def test_corpus_layout_split_files_and_decodable_clips(tmp_path):
    paths = render_corpus("synthetic", tmp_path / "syn", num_classes=3, clips_per_class=4, frames=8,
                          width=32, height=24, val_fraction=0.25, workers=1)
    assert paths["classes"].read_text().split() == list(CLASS_NAMES[:3])
    train = paths["train"].read_text().splitlines()
    val = paths["val"].read_text().splitlines()
    assert len(train) == 9 and len(val) == 3
    for line in train + val:
        rel, label = line.split(";")
        assert rel.startswith(f"videos/{CLASS_NAMES[int(label)]}/") and rel.endswith(".mp4")
        assert decode_video((paths["root"] / rel).read_bytes()).shape == (8, 24, 32, 3)


def test_same_seed_same_bytes_whatever_the_worker_count_and_other_seed_differs(tmp_path):
    args = dict(num_classes=2, clips_per_class=2, frames=6, width=32, height=24)
    one = render_corpus("nohuman", tmp_path / "a", workers=1, **args)
    two = render_corpus("nohuman", tmp_path / "b", workers=2, **args)
    other = render_corpus("nohuman", tmp_path / "c", workers=1, seed=1, **args)
    for line in one["train"].read_text().splitlines():
        rel = line.split(";")[0]
        assert (one["root"] / rel).read_bytes() == (two["root"] / rel).read_bytes()
        assert (one["root"] / rel).read_bytes() != (other["root"] / rel).read_bytes()


@pytest.mark.parametrize("kind", synth.KINDS)
def test_every_class_of_every_kind_moves(kind):
    for label in range(len(CLASS_NAMES)):
        frames = render_clip(ClipSpec(kind, label, 0, len(CLASS_NAMES), 12, 48, 64, 12.0, 0))
        assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
        change = np.abs(frames[1:].astype(int) - frames[:-1].astype(int)).max(axis=(1, 2, 3))
        assert change.max() > 40, f"{kind}/{CLASS_NAMES[label]} shows no motion"


def test_actions_are_distinct_motions():
    """Joint trajectories over a cycle differ clearly between every pair of the >= 8 actions."""
    assert len(ACTIONS) >= 8
    phases = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    tracks = {name: np.stack([np.stack(list(skeleton(action(p)).values())) for p in phases])
              for name, action in ACTIONS.items()}
    for a, b in itertools.combinations(tracks, 2):
        assert np.abs(tracks[a] - tracks[b]).mean() > 0.02, f"{a} and {b} move alike"


def test_downstream_renders_differently_from_synthetic():
    spec = dict(class_index=0, clip_index=0, num_classes=8, frames=4, height=48, width=64, fps=12.0, seed=0)
    stick = render_clip(ClipSpec("synthetic", **spec))
    solid = render_clip(ClipSpec("downstream", **spec))
    assert np.abs(stick.astype(int) - solid.astype(int)).mean() > 20


@pytest.mark.parametrize("kind", ["synthetic", "downstream"])
def test_figures_are_bright_on_a_dim_scene_and_fill_most_of_the_height(kind):
    """What makes the demo learnable in CPU minutes (bench/stages/RESULTS.md): the figure, not the
    palette, carries the class, so it must stand out brightly and be large in every clip."""
    for label in range(len(CLASS_NAMES)):
        for clip in range(3):
            frames = render_clip(ClipSpec(kind, label, clip, len(CLASS_NAMES), 16, 96, 128, 15.0, 0))
            value = frames.max(axis=-1)  # HSV value: figures >= 0.75, backdrops <= 0.6 of full scale
            bright = value > 170  # the figure's pixels
            assert np.median(value) < 110, f"{kind}/{CLASS_NAMES[label]}/{clip}: the scene is not dim"
            assert 0.02 < bright.mean() < 0.4, f"{kind}/{CLASS_NAMES[label]}/{clip}: figure area {bright.mean():.3f}"
            rows = np.flatnonzero(bright.any(axis=(0, 2)))
            extent = (rows.max() - rows.min() + 1) / frames.shape[1]
            assert 0.5 < extent <= 1.0, f"{kind}/{CLASS_NAMES[label]}/{clip}: figure spans {extent:.2f} of the height"


def test_frame_folder_output(tmp_path):
    paths = render_corpus("downstream", tmp_path, num_classes=1, clips_per_class=1, frames=5, width=32,
                          height=24, val_fraction=0.0, output_format="frames", workers=1)
    folder = paths["root"] / paths["train"].read_text().split(";")[0]
    assert sorted(p.name for p in folder.iterdir()) == [f"img_{i:05d}.jpg" for i in range(1, 6)]


@pytest.mark.parametrize("bad, message", [
    (dict(kind="humans"), "corpus kind"), (dict(num_classes=0), "num_classes"), (dict(num_classes=11), "num_classes"),
    (dict(width=33), "even"), (dict(val_fraction=1.0), "val_fraction"), (dict(output_format="gif"), "output_format"),
])
def test_bad_arguments_are_named(tmp_path, bad, message):
    kwargs = dict(kind="synthetic", out_dir=tmp_path) | bad
    with pytest.raises(ValueError, match=message):
        render_corpus(**kwargs)


def test_cli_writes_a_vp9_corpus(tmp_path):
    assert synth.main(["nohuman", str(tmp_path), "--classes", "2", "--clips-per-class", "1", "--frames", "4",
                       "--width", "32", "--height", "24", "--codec", "vp9", "--val-fraction", "0",
                       "--workers", "1"]) == 0
    rel = (tmp_path / "train.txt").read_text().splitlines()[0].split(";")[0]
    assert rel.endswith(".webm") and decode_video((tmp_path / rel).read_bytes()).shape[0] == 4

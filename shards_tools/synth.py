"""Procedural demo corpora that mirror PPMA's three data roles, rendered with numpy/PIL, encoded with PyAV.

- `synthetic`:  stick-figure "virtual humans" performing parametric actions, random position, size,
                speed, phase, facing and colours (stage-2 alignment data);
- `nohuman`:    the same class names, but scenes without any figure: each class keeps a typical
                motion and backdrop (as No-Human Kinetics keeps the label after removing the person);
- `downstream`: the same actions rendered differently (thicker limbs, per-part palettes, tiled floor,
                camera zoom) for linear probe / fine-tune.

Every clip is a pure function of (seed, kind, class, clip index), so a corpus is reproducible and
can be rendered by any number of processes. Output layout (PPMA split format):

    out_dir/classes.txt                 one class name per line (line number = label id)
    out_dir/train.txt, out_dir/val.txt  `videos/<class>/<class>_0003.mp4;<label id>` per line
    out_dir/videos/<class>/...          video files (or JPEG-frame folders with --format frames)
"""
from __future__ import annotations

import argparse
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shards_tools.figures import ACTIONS, BONES, HEAD_RADIUS, skeleton
from shards_tools.parallel import default_workers
from shards_tools.scenes import background, random_colour, render_scene
from shards_tools.videoio import encode_video, video_extension

KINDS = ("synthetic", "nohuman", "downstream")
CLASS_NAMES = tuple(ACTIONS)


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip."""

    kind: str
    class_index: int
    clip_index: int
    num_classes: int
    frames: int
    height: int
    width: int
    fps: float
    seed: int


def _tiled_floor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Downstream backdrop: dim sky gradient over a dim perspective checkerboard floor."""
    sky = background(rng, h, w, "gradient")
    sky = (sky.astype(np.float32) * rng.uniform(0.3, 0.6)).astype(np.uint8)
    horizon = int(rng.uniform(0.45, 0.65) * h)
    y, x = np.mgrid[horizon:h, 0:w].astype(np.float32)
    depth = (y - horizon + 1) / (h - horizon)
    tile = rng.uniform(0.08, 0.2) * w
    checker = ((np.floor((x - w / 2) / (tile * depth + 1e-3)) + np.floor(6 / depth)) % 2)[..., None]
    a, b = np.array(random_colour(rng)), np.array(random_colour(rng, value=(0.1, 0.5)))
    sky[horizon:] = ((a * checker + b * (1 - checker)) * 0.4).astype(np.uint8)
    return sky


def _dark_backdrop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Synthetic backdrop: a dim gradient of random hue (the figure, not the backdrop, carries the class)."""
    return (background(rng, h, w, "gradient").astype(np.float32) * rng.uniform(0.15, 0.4)).astype(np.uint8)


@lru_cache(maxsize=None)
def _action_extent(name: str) -> tuple[float, float, float]:
    """(half width, lowest y, height) in body units of every joint and the head over one cycle, either facing."""
    xs, ys = [], []
    for phase in np.linspace(0, 2 * math.pi, 24, endpoint=False):
        for name_, (x, y) in skeleton(ACTIONS[name](phase)).items():
            r = HEAD_RADIUS * 1.25 if name_ == "head" else 0.04
            xs += [abs(x) + r]
            ys += [y - r, y + r]
    return max(xs), min(ys), max(ys) - min(ys)


def _figure_clip(spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """A figure performing its class's action, sized to fill most of the frame height.

    `synthetic`: one bright colour, thick sticks, dim gradient backdrop; `downstream`: bright
    per-part colours, thicker capsule limbs, a checkerboard floor, a slow camera zoom. Both keep
    the figure bright against a dim scene: measured on the demo, a tiny ViT learns the actions in
    CPU minutes then, while with random backdrop/figure palettes it only memorises colours
    (bench/stages/RESULTS.md)."""
    name = CLASS_NAMES[spec.class_index]
    action = ACTIONS[name]
    h, w, solid = spec.height, spec.width, spec.kind == "downstream"
    if solid:
        backdrop = _tiled_floor(rng, h, w)
        cycles_per_second = rng.uniform(0.5, 0.9)
        zoom = rng.uniform(-0.15, 0.15)
        colours = {part: random_colour(rng, value=(0.75, 1.0)) for part in ("torso", "arms", "legs", "head")}
    else:
        backdrop = _dark_backdrop(rng, h, w)
        cycles_per_second = rng.uniform(0.6, 1.1)
        zoom = 0.0
        colours = dict.fromkeys(("torso", "arms", "legs", "head"), random_colour(rng, value=(0.8, 1.0)))
    half_width, lowest, height = _action_extent(name)
    fill = rng.uniform(0.65, 0.85)
    scale = fill * h / (height * (1 + abs(zoom)))
    thickness = max(1, round(scale * 0.085 * (1.3 if solid else 1.0)))
    facing = float(rng.choice((-1.0, 1.0)))
    half_w = half_width * scale
    travel = 0.0
    if name == "walk":  # walkers cross the frame in the direction they face
        travel = facing * min(rng.uniform(0.15, 0.3) * w, max(0.0, w - 2 * half_w)) / max(spec.frames - 1, 1)
    span = abs(travel) * (spec.frames - 1)
    lo, hi = half_w, w - half_w - span
    start_x = (rng.uniform(lo, hi) if hi > lo else (w - span) / 2) + (span if travel < 0 else 0.0)
    ground = h - (h - fill * h) / 2 * rng.uniform(0.2, 1.8) + lowest * scale
    phase0 = rng.uniform(0, 2 * math.pi)
    shake = rng.normal(0, 0.6, size=(spec.frames, 2)).cumsum(0) * 0.3
    out = np.empty((spec.frames, h, w, 3), np.uint8)
    for t in range(spec.frames):
        joints = skeleton(action(phase0 + 2 * math.pi * cycles_per_second * t / spec.fps))
        size = scale * (1.0 + zoom * t / spec.frames)
        cx, cy = start_x + travel * t + shake[t, 0], ground + shake[t, 1]
        px = {joint: (cx + facing * p[0] * size, cy - p[1] * size) for joint, p in joints.items()}
        image = Image.fromarray(backdrop)
        draw = ImageDraw.Draw(image)
        radius = thickness / 2
        for part, bones in BONES.items():
            for a, b in bones:
                draw.line((px[a], px[b]), fill=colours[part], width=thickness)
                for x, y in (px[a], px[b]):  # round joints make capsule limbs
                    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[part])
        hx, hy = px["head"]
        r = HEAD_RADIUS * size * (1.25 if solid else 1.1)
        draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=colours["head"])
        out[t] = np.asarray(image)
    return out


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Frames (T, H, W, 3 uint8) of one clip; a pure function of `spec`."""
    kind_id = KINDS.index(spec.kind)
    rng = np.random.default_rng([spec.seed, kind_id, spec.class_index, spec.clip_index])
    if spec.kind == "nohuman":
        return render_scene(rng, spec.class_index, spec.num_classes, spec.frames, spec.height, spec.width, spec.fps)
    return _figure_clip(spec, rng)


def _write_clip(job: tuple[ClipSpec, Path, str, str]) -> None:
    spec, path, output_format, codec = job
    frames = render_clip(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output_format == "frames":
        path.mkdir(exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"img_{t + 1:05d}.jpg", quality=90)
    else:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(encode_video(frames, spec.fps, codec, crf=20, gop=8, threads=1))
        os.replace(tmp, path)


def render_corpus(kind: str, out_dir: str | Path, num_classes: int = 8, clips_per_class: int = 16,
                  frames: int = 32, width: int = 128, height: int = 96, fps: float = 15.0, seed: int = 0,
                  codec: str = "h264", val_fraction: float = 0.25, output_format: str = "video",
                  workers: int | None = None) -> dict[str, Path]:
    """Render a labelled corpus into `out_dir`; returns paths of 'classes', 'train', 'val' and 'root'."""
    if kind not in KINDS:
        raise ValueError(f"corpus kind {kind!r} is unknown; expected one of {KINDS}")
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be 1..{len(CLASS_NAMES)} (the actions {CLASS_NAMES}), got {num_classes}")
    if clips_per_class < 1 or frames < 1:
        raise ValueError(f"clips_per_class and frames must be >= 1, got {clips_per_class} and {frames}")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"width x height must be even and >= 16, got {width}x{height}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if output_format not in ("video", "frames"):
        raise ValueError(f"output_format must be 'video' or 'frames', got {output_format!r}")
    out_dir = Path(out_dir)
    names = CLASS_NAMES[:num_classes]
    suffix = "" if output_format == "frames" else "." + video_extension(codec)
    jobs, train, val = [], [], []
    num_val = int(round(clips_per_class * val_fraction))
    for label, name in enumerate(names):
        for clip in range(clips_per_class):
            rel = f"videos/{name}/{name}_{clip:04d}{suffix}"
            spec = ClipSpec(kind, label, clip, num_classes, frames, height, width, fps, seed)
            jobs.append((spec, out_dir / rel, output_format, codec))
            (val if clip >= clips_per_class - num_val else train).append(f"{rel};{label}")
    workers = workers or default_workers()
    if workers == 1:
        for job in jobs:
            _write_clip(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_clip, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    paths = {"root": out_dir, "classes": out_dir / "classes.txt", "train": out_dir / "train.txt",
             "val": out_dir / "val.txt"}
    paths["classes"].write_text("\n".join(names) + "\n")
    paths["train"].write_text("".join(line + "\n" for line in train))
    paths["val"].write_text("".join(line + "\n" for line in val))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppma-synth", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--classes", type=int, default=8, help=f"number of action classes (max {len(CLASS_NAMES)})")
    parser.add_argument("--clips-per-class", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", choices=("h264", "vp9"), default="h264")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--format", dest="output_format", choices=("video", "frames"), default="video",
                        help="video files, or folders of JPEG frames (UCF101/HMDB51 style)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        paths = render_corpus(args.kind, args.out_dir, args.classes, args.clips_per_class, args.frames, args.width,
                              args.height, args.fps, args.seed, args.codec, args.val_fraction,
                              args.output_format, args.workers)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.kind} corpus to {paths['root']} ({args.classes} classes x {args.clips_per_class} clips)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

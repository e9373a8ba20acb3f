"""Backgrounds and figure-free scenes for the `nohuman` corpus.

No-Human Kinetics keeps each clip's action label after the person is removed, so what is left to
learn from is scene context and motion. Here every class gets its own motion pattern and a
background style with a class-typical hue; positions, sizes, speeds and colours are random.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

TEXTURES = ("gradient", "stripes", "checker", "dots", "rings", "diagonal", "noise", "split")


def random_colour(rng: np.random.Generator, hue: float | None = None, value: tuple = (0.3, 1.0)) -> tuple:
    """An RGB colour; `hue` (0..1) pins the hue up to a small jitter."""
    h = rng.uniform() if hue is None else (hue + rng.normal(0, 0.04)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.3, 0.9), rng.uniform(*value))
    return (int(r * 255), int(g * 255), int(b * 255))


def contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_luma_gap: float = 90) -> tuple:
    """A random colour whose luma differs from the mean of `against` by at least `min_luma_gap`."""
    luma = float(np.dot(against.reshape(-1, 3).mean(0), (0.299, 0.587, 0.114)))
    for _ in range(64):
        colour = random_colour(rng, value=(0.05, 1.0))
        if abs(np.dot(colour, (0.299, 0.587, 0.114)) - luma) >= min_luma_gap:
            return colour
    return (255, 255, 255) if luma < 128 else (0, 0, 0)


def background(rng: np.random.Generator, height: int, width: int, texture: str | None = None,
               hue: float | None = None) -> np.ndarray:
    """A static (H, W, 3) uint8 background in one of `TEXTURES`."""
    texture = texture or TEXTURES[rng.integers(len(TEXTURES))]
    a = np.array(random_colour(rng, hue), np.float32)
    b = np.array(random_colour(rng, hue if rng.uniform() < 0.5 else None), np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 24)
    if texture == "gradient":
        weight = y / max(height - 1, 1)
    elif texture == "stripes":
        weight = (np.sin((x if rng.uniform() < 0.5 else y) * 2 * np.pi / period) > 0).astype(np.float32)
    elif texture == "checker":
        weight = ((x // period + y // period) % 2).astype(np.float32)
    elif texture == "dots":
        weight = ((np.sin(x * 2 * np.pi / period) * np.sin(y * 2 * np.pi / period)) > 0.6).astype(np.float32)
    elif texture == "rings":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        weight = (np.sin(np.hypot(x - cx, y - cy) * 2 * np.pi / period) > 0).astype(np.float32)
    elif texture == "diagonal":
        weight = (np.sin((x + y) * 2 * np.pi / period) > 0).astype(np.float32)
    elif texture == "noise":
        coarse = rng.uniform(size=(max(height // 8, 2), max(width // 8, 2))).astype(np.float32)
        weight = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                            np.float32) / 255
    elif texture == "split":
        weight = (y > rng.uniform(0.4, 0.8) * height).astype(np.float32)
    else:
        raise ValueError(f"unknown background texture {texture!r}; expected one of {TEXTURES}")
    mix = 0.35 + 0.65 * weight[..., None] if texture != "gradient" else weight[..., None]
    return (a * (1 - mix) + b * mix).clip(0, 255).astype(np.uint8)


def _shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, rx: float, ry: float,
           colour: tuple, angle: float = 0.0) -> None:
    if kind == 0:
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
    else:  # rotated rectangle (kind 1) or triangle (kind 2)
        corners = ((-1, -1), (1, -1), (1, 1), (-1, 1)) if kind == 1 else ((0, -1), (1, 1), (-1, 1))
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + u * rx * c - v * ry * s, cy + u * rx * s + v * ry * c) for u, v in corners], fill=colour)


# One motion per class, in the order of figures.ACTIONS: each maps (phase, shape index, params)
# to (dx, dy, x-scale, y-scale, angle) in units of the shape's home position and size.
def _pendulum(p, i, r):
    return (r["amp"] * math.sin(p + i), 0.0, 1.0, 1.0, 0.0)


def _bounce(p, i, r):
    return (0.0, -r["amp"] * abs(math.sin(p + 0.7 * i)), 1.0, 1.0, 0.0)


def _squash(p, i, r):
    k = 0.5 - 0.5 * math.cos(p + 0.3 * i)
    return (0.0, 0.5 * k * r["size"], 1.0 + 0.4 * k, 1.0 - 0.5 * k, 0.0)


def _pan(p, i, r):
    return (0.0, 0.0, 1.0, 1.0, 0.0)  # the camera moves instead (see render_scene)


def _converge(p, i, r):
    k = (0.5 + 0.5 * math.cos(p)) ** 2
    return ((1 if i % 2 else -1) * 0.6 * r["amp"] * (1 - k), 0.0, 1.0, 1.0, 0.0)


def _launch(p, i, r):
    t = (p / (2 * math.pi) + 0.3 * i) % 1.0
    return (2.5 * r["amp"] * (t - 0.5), -4 * r["amp"] * t * (1 - t), 1.0, 1.0, 6 * t)


def _piston(p, i, r):
    k = max(0.0, math.sin(p + math.pi * i)) ** 2
    return (0.0, 0.0, 1.0 + 2.0 * k, 1.0, 0.0)


def _orbit(p, i, r):
    a = p + 2 * math.pi * i / 3
    return (r["amp"] * math.cos(a), 0.5 * r["amp"] * math.sin(a), 1.0, 1.0, a)


def _sway(p, i, r):
    return (0.0, 0.0, 1.0, 1.0, 0.5 * math.sin(p + 0.4 * i))


def _pulse(p, i, r):
    k = 0.5 - 0.5 * math.cos(p)
    return (0.0, 0.0, 0.6 + 1.2 * k, 0.6 + 1.2 * k, 0.0)


MOTIONS = (_pendulum, _bounce, _squash, _pan, _converge, _launch, _piston, _orbit, _sway, _pulse)


def render_scene(rng: np.random.Generator, class_index: int, num_classes: int, frames: int,
                 height: int, width: int, fps: float) -> np.ndarray:
    """A figure-free clip (T, H, W, 3 uint8) whose motion and backdrop are typical of its class."""
    motion = MOTIONS[class_index % len(MOTIONS)]
    hue = (class_index + 0.5) / max(num_classes, 1)
    texture = TEXTURES[class_index % len(TEXTURES)] if rng.uniform() < 0.7 else None
    pan_speed = 0.0
    if motion is _pan or rng.uniform() < 0.15:  # camera pans: render a wider world, slide a window over it
        pan_speed = rng.uniform(0.4, 1.2) * width / frames * rng.choice((-1, 1))
    world_width = width + int(math.ceil(abs(pan_speed) * frames)) + 2
    world = background(rng, height, world_width, texture, hue)
    count = int(rng.integers(2, 5))
    size = rng.uniform(0.08, 0.16) * height
    shapes = [dict(kind=int(rng.integers(3)), x=rng.uniform(0.15, 0.85) * width, y=rng.uniform(0.3, 0.8) * height,
                   rx=size * rng.uniform(0.7, 1.3), ry=size * rng.uniform(0.7, 1.3),
                   colour=contrasting_colour(rng, world, 60)) for _ in range(count)]
    if motion is _pan:  # objects fixed in the world, so they slide past with the backdrop
        for s in shapes:
            s["x"] = rng.uniform(0.05, 0.95) * world_width
    if motion is _converge:  # two shapes facing each other across the frame centre
        shapes = shapes[:2]
        shapes[0]["x"], shapes[1]["x"] = 0.5 * width - size, 0.5 * width + size
        shapes[1]["y"] = shapes[0]["y"]
    params = {"amp": rng.uniform(0.15, 0.3) * width, "size": size}
    cycles_per_second, phase0 = rng.uniform(0.6, 1.4), rng.uniform(0, 2 * math.pi)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        phase = phase0 + 2 * math.pi * cycles_per_second * t / fps
        offset = int(round(t * abs(pan_speed))) if pan_speed > 0 else int(round((frames - t) * abs(pan_speed)))
        image = Image.fromarray(world[:, offset:offset + width])
        draw = ImageDraw.Draw(image)
        for i, s in enumerate(shapes):
            dx, dy, sx, sy, angle = motion(phase, i, params)
            if motion is _pan:
                dx -= offset
            _shape(draw, s["kind"], s["x"] + dx, s["y"] + dy, s["rx"] * sx, s["ry"] * sy, s["colour"], angle)
        out[t] = np.asarray(image)
    return out

"""`ppma-stats`: what is in a shard set: counts, class histogram, duration / resolution / fps spread.

Reads only the manifest and the samples' json (not the video bytes). `--plot out.png` draws the
same distributions as bar charts (with PIL, so no plotting library is needed). A missing or damaged
shard is named and the rest still counted; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ppma_scale.data.manifest import load_manifest
from shards_tools.tario import iter_samples
from ppma_scale.cli import run_tool


def _shard_metadata(url: str, expected: int, problems: list[str]) -> list[dict[str, Any]]:
    """The json of every sample of one tar; a missing or damaged tar, one cut short (fewer samples
    than the manifest's count) or a sample without json is added to `problems` by name, keeping what
    was read before the damage."""
    metas: list[dict[str, Any]] = []
    read = 0
    try:
        for sample in iter_samples(url, ("json",)):
            read += 1
            try:
                meta = json.loads(sample["json"])
            except (KeyError, ValueError):
                meta = None
            if not isinstance(meta, dict):
                problems.append(f"{url}: sample {sample['__key__']} has no json object; left out")
                continue
            metas.append(meta)
    except (tarfile.TarError, OSError, ValueError) as exc:
        reason = str(exc).split(" @ <")[0]  # webdataset appends the file object's repr
        problems.append(f"{url}: unreadable after {read} samples ({type(exc).__name__}: {reason})")
        return metas
    if read != expected:
        problems.append(f"{url}: holds {read} samples, manifest says {expected}")
    return metas


def collect_stats(manifest_path: str | Path) -> dict[str, Any]:
    """Per-set numbers as plain data (what `main` prints and plots); `problems` names unreadable shards."""
    manifest = load_manifest(manifest_path)
    durations, fps, short_sides, labels, frames = [], [], [], [], 0
    resolutions, codecs, flags = Counter(), Counter(), Counter()
    problems: list[str] = []
    shards = zip(manifest.shard_urls(), manifest.shards)
    for meta in (m for url, info in shards for m in _shard_metadata(url, info.samples, problems)):
        durations.append(float(meta["duration"]))
        fps.append(round(float(meta["fps"]), 2))
        short_sides.append(min(meta["width"], meta["height"]))
        labels.append(int(meta["label"]))
        frames += int(meta["frames"])
        resolutions[f"{meta['width']}x{meta['height']}"] += 1
        codecs[meta["codec"]] += 1
        for flag in ("vfr", "copied"):
            flags[flag] += bool(meta.get(flag))
        flags["rotated"] += bool(meta.get("rotation"))
    per_class = Counter(labels)
    reasons = Counter(r["reason"].split(":")[0] for r in manifest.rejected)
    return {
        "dataset": manifest.dataset, "shards": len(manifest.shards), "samples": len(labels),
        "frames": frames, "hours": sum(durations) / 3600,
        "bytes": sum(s.bytes for s in manifest.shards), "classes": manifest.classes,
        "class_counts": [per_class.get(i, 0) for i in range(len(manifest.classes))],
        "durations": durations, "fps": fps, "short_sides": short_sides,
        "resolutions": dict(resolutions.most_common()), "codecs": dict(codecs), "flags": dict(flags),
        "shard_samples": [s.samples for s in manifest.shards], "rejected": dict(reasons.most_common()),
        "problems": problems,
    }


def _spread(values: list[float], unit: str) -> str:
    if not values:
        return "n/a"
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return (f"min {q[0]:.3g}{unit}  p10 {q[1]:.3g}{unit}  median {q[2]:.3g}{unit}  p90 {q[3]:.3g}{unit}  "
            f"max {q[4]:.3g}{unit}  mean {np.mean(values):.3g}{unit}")


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    lines = [f"dataset {stats['dataset']}: {stats['samples']} clips in {stats['shards']} shards, "
             f"{stats['hours']:.3f} h, {stats['frames']} frames, {stats['bytes'] / 2**20:.1f} MiB",
             f"samples per shard: {_spread(stats['shard_samples'], '')}",
             f"duration: {_spread(stats['durations'], 's')}",
             f"fps: {dict(sorted(Counter(stats['fps']).items()))}",
             f"short side: {_spread(stats['short_sides'], 'px')}",
             f"resolutions: {dict(list(stats['resolutions'].items())[:8])}",
             f"codecs: {stats['codecs']}  flags: {stats['flags']}",
             f"classes ({len(stats['classes'])}):"]
    top = max(stats["class_counts"], default=0) or 1
    name_width = max((len(n) for n in stats["classes"]), default=0)
    for label, (name, count) in enumerate(zip(stats["classes"], stats["class_counts"])):
        lines.append(f"  {label:4d} {name:<{name_width}} {count:7d} {'#' * int(round(width * count / top))}")
    lines.append(f"rejected inputs: {sum(stats['rejected'].values())} {stats['rejected'] or ''}".rstrip())
    return "\n".join(lines)


def _bar_chart(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
               labels: list[str], values: list[float]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(180, 180, 180))
    draw.text((x0 + 6, y0 + 4), title, fill=(0, 0, 0))
    if not values:
        draw.text((x0 + 6, y0 + 24), "no data", fill=(120, 120, 120))
        return
    top, plot_top, plot_bottom = max(values) or 1, y0 + 22, y1 - 18
    step = min((x1 - x0 - 12) / len(values), 80)
    for i, (label, value) in enumerate(zip(labels, values)):
        left = x0 + 6 + i * step
        height = (plot_bottom - plot_top) * value / top
        draw.rectangle((left + 1, plot_bottom - height, left + max(step - 2, 1), plot_bottom), fill=(70, 110, 190))
        if len(values) <= 24 or i % (len(values) // 12 + 1) == 0:
            draw.text((left + 1, plot_bottom + 2), label[:max(int(step / 6), 3)], fill=(0, 0, 0))
    draw.text((x1 - 60, y0 + 4), f"max {top:g}", fill=(80, 80, 80))


def _histogram(values: list[float], bins: int = 20) -> tuple[list[str], list[float]]:
    if not values:
        return [], []
    if min(values) == max(values):
        return [f"{values[0]:.3g}"], [len(values)]
    counts, edges = np.histogram(values, bins=bins)
    return [f"{e:.3g}" for e in edges[:-1]], counts.tolist()


def plot_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Four bar charts (classes, duration, fps, short side) in one PNG."""
    image = Image.new("RGB", (1000, 640), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), f"{stats['dataset']}: {stats['samples']} clips, {stats['hours']:.2f} h", fill=(0, 0, 0))
    _bar_chart(draw, (10, 24, 990, 220), "clips per class", stats["classes"], stats["class_counts"])
    _bar_chart(draw, (10, 230, 495, 430), "duration (s)", *_histogram(stats["durations"]))
    fps = sorted(Counter(stats["fps"]).items())
    _bar_chart(draw, (505, 230, 990, 430), "fps", [f"{f:g}" for f, _ in fps], [c for _, c in fps])
    _bar_chart(draw, (10, 440, 990, 630), "short side (px)", *_histogram(stats["short_sides"]))
    path = Path(path)
    image.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppma-stats", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("manifest", type=Path, help="manifest.json or the folder holding it")
    parser.add_argument("--plot", type=Path, default=None, help="also write the distributions to this PNG")
    args = parser.parse_args(argv)
    def work() -> int:
        stats = collect_stats(args.manifest)
        print(format_stats(stats))
        if args.plot:
            print(f"plot written to {plot_stats(stats, args.plot)}")
        for problem in stats["problems"]:
            print(f"ppma-stats: error: {problem}", file=sys.stderr)
        if stats["problems"]:
            print(f"ppma-stats: {len(stats['problems'])} problem(s): the numbers above leave out the samples "
                  "that could not be read", file=sys.stderr)
        return 1 if stats["problems"] else 0
    return run_tool("ppma-stats", work)


if __name__ == "__main__":
    raise SystemExit(main())

"""`ppma-show`: one sample's frames as a contact-sheet PNG: the first look at a freshly packed corpus."""
from __future__ import annotations

import argparse
import bisect
import json
import os
import tarfile
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
from PIL import Image, ImageDraw

from ppma_scale.data.manifest import Manifest, load_manifest
from shards_tools.tario import iter_samples, video_field
from shards_tools.videoio import decode_video
from ppma_scale.cli import run_tool

HEADER = 30
GAP = 4


def contact_sheet(frames: np.ndarray, caption: str, count: int = 16, columns: int = 8,
                  min_tile_width: int = 160) -> Image.Image:
    """`count` evenly spaced frames of (T, H, W, 3) in a grid, upscaled so small clips stay visible."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    height, width = frames.shape[1:3]
    scale = max(1, int(np.ceil(min_tile_width / width)))
    tile_w, tile_h = width * scale, height * scale
    columns = min(columns, len(picks))
    rows = int(np.ceil(len(picks) / columns))
    sheet = Image.new("RGB", (columns * (tile_w + GAP) + GAP, HEADER + rows * (tile_h + GAP + 12) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 4), caption, fill=(0, 0, 0))
    for n, t in enumerate(picks):
        x = GAP + (n % columns) * (tile_w + GAP)
        y = HEADER + (n // columns) * (tile_h + GAP + 12)
        sheet.paste(Image.fromarray(frames[t]).resize((tile_w, tile_h), Image.NEAREST), (x, y))
        draw.text((x, y + tile_h + 1), f"t={t}", fill=(60, 60, 60))
    return sheet


UNREADABLE = (tarfile.TarError, OSError, ValueError)  # a missing, truncated or damaged tar


def _first(url: str, wanted: Callable[[int, dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The first sample of one tar that `wanted(position, sample)` accepts, reading no further;
    a damaged tar is a ValueError naming it (not a raw tarfile error)."""
    try:
        for position, sample in enumerate(iter_samples(url)):
            if wanted(position, sample):
                return sample
    except UNREADABLE as exc:
        reason = str(exc).split(" @ <")[0]  # webdataset appends the file object's repr
        raise ValueError(f"shard {url} is unreadable ({type(exc).__name__}: {reason}); "
                         "ppma-verify checks the set") from None
    return None


def find_sample(manifest: Manifest, key: str | None = None, index: int = 0) -> tuple[dict[str, Any], str]:
    """(sample, its shard) by key, else by position in manifest order. A position reads only its
    shard (located by the manifest's counts), so one damaged shard does not hide the others."""
    urls = manifest.shard_urls()
    if key is None:
        if not 0 <= index < manifest.num_samples:
            raise ValueError(f"sample index {index} is out of range: the set holds {manifest.num_samples} samples")
        ends = list(accumulate(s.samples for s in manifest.shards))
        shard = bisect.bisect_right(ends, index)
        within = index - (ends[shard - 1] if shard else 0)
        sample = _first(urls[shard], lambda position, _: position == within)
        if sample is None:
            raise ValueError(f"shard {urls[shard]} holds fewer samples than the manifest's "
                             f"{manifest.shards[shard].samples}: sample {index} is not there")
        return sample, urls[shard]
    unreadable = []
    for url in urls:
        try:
            sample = _first(url, lambda _, s: s["__key__"] == key)
        except ValueError as exc:
            unreadable.append(str(exc))
            continue
        if sample is not None:
            return sample, url
    raise ValueError(f"no sample with key {key!r} in the shard set at {manifest.location}"
                     + (f"; {'; '.join(unreadable[:3])}" if unreadable else ""))


def show(manifest_path: str | Path, output: str | Path, key: str | None = None, index: int = 0,
         count: int = 16, columns: int = 8) -> Path:
    """Write the contact sheet of one sample (by key, else by position) to `output`."""
    manifest = load_manifest(manifest_path)
    sample, url = find_sample(manifest, key, index)
    where = f"sample {sample['__key__']} of {os.path.basename(url)}"
    field = video_field(sample)
    if field is None:
        raise ValueError(f"{where} holds no mp4/webm clip")
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: unreadable json: {exc}") from None
    meta = meta if isinstance(meta, dict) else {}
    try:
        frames = decode_video(sample[field])
    except av.error.FFmpegError as exc:
        raise ValueError(f"{where}: the clip does not decode: {exc}") from None
    caption = (f"{sample['__key__']}  label {meta.get('label')} ({meta.get('label_name')})  "
               f"{frames.shape[2]}x{frames.shape[1]}  {len(frames)} frames @ {meta.get('fps', 0):g} fps  "
               f"{field}  from {meta.get('source')}")
    output = Path(output)
    contact_sheet(frames, caption, count, columns).save(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppma-show", description=__doc__, allow_abbrev=False)
    parser.add_argument("manifest", type=Path, help="manifest.json or the folder holding it")
    parser.add_argument("--output", "-o", type=Path, default=Path("sample.png"))
    parser.add_argument("--key", default=None, help="sample key (default: pick by --index)")
    parser.add_argument("--index", type=int, default=0, help="position of the sample in the set")
    parser.add_argument("--frames", type=int, default=16, help="frames on the sheet")
    parser.add_argument("--columns", type=int, default=8)
    args = parser.parse_args(argv)
    def work() -> int:
        path = show(args.manifest, args.output, args.key, args.index, args.frames, args.columns)
        print(f"contact sheet written to {path}")
        return 0
    return run_tool("ppma-show", work)


if __name__ == "__main__":
    raise SystemExit(main())

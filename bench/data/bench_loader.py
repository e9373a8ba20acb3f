"""Training clips/s per CPU core: our shard stream vs a PPMA-reference-style per-file loader, same run.

Workload (issue 4): 16 frames spread over 2.7 s (PPMA window sampling), 224 px, stage-1 augmentation
(random-resized crop + flip), 4 repeated views per decoded video. A "training clip" is one view
handed to the model; clips/s per core = clips/s / DataLoader workers.

Videos are generated here with PyAV (procedural, textured, moving): `--seconds` long, 30 fps,
short side 320 (16:9), H.264 with x264's default keyframe interval of 250 frames (what ffmpeg
writes by default, so the reference loader's seek usually lands on frame 0 of a 10 s clip).

Rows:
- `baseline per-file`: the videos as plain files; per clip: open the file, seek to the window
  start, decode every frame of the 2.7 s window, convert each to RGB, keep 16, short side 256 in
  float, then per view a random-resized crop 224 and normalisation (as the reference's
  pytorchvideo/omnivision pipeline does on the CPU); default collate.
- `ours pyav, same bytes`: the very same files inside tar shards: only the loader differs.
- `ours pyav, ppma-pack`: shards made by `shards_tools.pack` (short side 320, keyframe every 8).
- `ours pyav, ppma-pack --fps 12`: the same, stored at 12 fps (enough for 16 frames over 2.7 s).
- `ours pyav, ppma-pack gop 32`: keyframe every 32 frames (fewer, costly I-frames; longer seeks).
- `ours dali cpu, ppma-pack vp9` and `ours pyav, ppma-pack vp9`: VP9 shards (skipped without DALI).

    python bench/data/bench_loader.py                  # defaults: 16 videos of 10 s, workers = cores
    python bench/data/bench_loader.py --videos 8 --seconds 6 --batches 4 --rounds 1   # quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ppma_scale.data.decode import dali_available  # noqa: E402
from ppma_scale.data.loader import build_train_stream  # noqa: E402
from ppma_scale.data.manifest import Manifest, ShardInfo  # noqa: E402
from shards_tools.pack import pack  # noqa: E402
from shards_tools.videoio import VideoWriter  # noqa: E402

FPS, HEIGHT, WIDTH = 30.0, 320, 568
FRAMES, WINDOW_S, SIZE, SHORT, VIEWS = 16, 2.7, 224, 256, 4
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
PREFETCH = 2


# ------------------------------------------------------------------------------------------ sources
def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture with some fine detail (a codec has work to do)."""
    coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    big = torch.from_numpy(coarse).permute(2, 0, 1)[None]
    smooth = F.interpolate(big, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    return np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.float32)


def _write_source(job: tuple[int, Path, float]) -> None:
    index, path, seconds = job
    if path.exists():
        return
    rng = np.random.default_rng(index)
    tex = _texture(rng, HEIGHT + 120, WIDTH + 240)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    blobs = [(rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(-6, 6), rng.uniform(-4, 4),
              rng.uniform(20, 60), rng.uniform(0, 255, 3)) for _ in range(4)]
    writer = VideoWriter(WIDTH, HEIGHT, FPS, "h264", crf=23, gop=250, preset="veryfast", threads=1)
    for t in range(int(seconds * FPS)):
        dy, dx = int(60 + 50 * math.sin(t / 40)), int(t * 0.8) % 240
        frame = tex[dy:dy + HEIGHT, dx:dx + WIDTH].copy()
        for x0, y0, vx, vy, r, colour in blobs:
            cx, cy = (x0 + vx * t) % WIDTH, (y0 + vy * t) % HEIGHT
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            frame[inside] = 0.3 * frame[inside] + 0.7 * colour
        frame += rng.normal(0, 1.5, frame.shape).astype(np.float32)  # sensor-like noise
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(writer.finish())
    tmp.rename(path)


def make_sources(folder: Path, videos: int, seconds: float, workers: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"video_{i:03d}.mp4" for i in range(videos)]
    with Pool(workers) as pool:
        pool.map(_write_source, [(i, p, seconds) for i, p in enumerate(paths)])
    (folder / "train.txt").write_text("".join(f"{p.name};{i % 4}\n" for i, p in enumerate(paths)))
    (folder / "classes.txt").write_text("a\nb\nc\nd\n")
    return paths


def same_bytes_shards(paths: list[Path], out: Path, seconds: float) -> Path:
    """The source files, unchanged, in tar shards (4 per shard) with a manifest."""
    if (out / "manifest.json").exists():
        return out / "manifest.json"
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(paths), 4):
        url = f"shard-{s // 4:04d}.tar"
        group = paths[s:s + 4]
        with wds.TarWriter(str(out / url)) as sink:
            for i, path in enumerate(group, s):
                meta = {"fps": FPS, "frames": int(seconds * FPS), "width": WIDTH, "height": HEIGHT}
                sink.write({"__key__": path.stem, "mp4": path.read_bytes(), "cls": str(i % 4).encode(),
                            "json": json.dumps(meta).encode()})
        shards.append(ShardInfo(url, len(group)))
    return Manifest("same_bytes", ["a", "b", "c", "d"], shards, settings={"encode": {"codec": "h264"}}).save(out)


# ------------------------------------------------------------------------------- reference loader
class PerFileClips(Dataset):
    """How the PPMA reference loads a stage-1 clip (pytorchvideo EncodedVideo + PyAV, per file)."""

    def __init__(self, paths: list[Path], length: int):
        self.paths, self.length = paths, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng(i)
        with av.open(str(self.paths[i % len(self.paths)])) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            tb = stream.time_base
            duration = float(stream.duration * tb)
            start = rng.uniform(0, max(0.0, duration - WINDOW_S))
            end = start + WINDOW_S
            container.seek(int(start / tb), any_frame=False, backward=True, stream=stream)
            frames = []
            for frame in container.decode(stream):
                t = float(frame.pts * tb)
                if t >= end:
                    break
                if t >= start:
                    frames.append(frame.to_rgb().to_ndarray())
        video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()  # C, T, H, W
        video = video[:, torch.linspace(0, video.shape[1] - 1, FRAMES).round().long()] / 255.0
        h, w = video.shape[-2:]
        scale = SHORT / min(h, w)
        video = F.interpolate(video, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
        mean, std = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
        views = []
        for _ in range(VIEWS):
            top, left, ch, cw = _rrc_box(video.shape[-2], video.shape[-1], rng)
            crop = F.interpolate(video[..., top:top + ch, left:left + cw], size=(SIZE, SIZE), mode="bilinear",
                                 align_corners=False)
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            views.append((crop - mean) / std)
        return torch.stack(views), i % 4


def _rrc_box(h: int, w: int, rng: np.random.Generator):
    from ppma_scale.data.transforms import random_resized_box
    return random_resized_box(h, w, (0.08, 1.0), (0.75, 1.3333), rng)


# -------------------------------------------------------------------------------------- measuring
def clips_per_second(batches, clips_per_batch: int, workers: int, prefetch: int, timed: int) -> float:
    """Steady-state rate: drain what was prefetched, then time `timed` arrivals between two arrivals
    (arrival to arrival, so the phase of the workers at the start does not bias the rate)."""
    iterator = iter(batches)
    for _ in range(workers * (prefetch + 1) + 1):
        next(iterator)
    start = time.perf_counter()
    for _ in range(timed):
        next(iterator)
    return timed * clips_per_batch / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    workers = args.workers or os.cpu_count() or 1
    sources = make_sources(out / "source", args.videos, args.seconds, workers)
    sets = {"same": same_bytes_shards(sources, out / "same_bytes", args.seconds)}
    split = out / "source" / "train.txt"
    per_shard = max(1, args.videos // 4)
    sets["pack"] = _packed(split, out / "pack_h264", per_shard, workers, codec="h264")
    sets["pack12"] = _packed(split, out / "pack_h264_fps12", per_shard, workers, codec="h264", fps=12.0)
    sets["pack32"] = _packed(split, out / "pack_h264_gop32", per_shard, workers, codec="h264", gop=32)
    has_dali = dali_available() and not args.no_vp9
    if not args.no_vp9:
        sets["vp9"] = _packed(split, out / "pack_vp9", per_shard, workers, codec="vp9")
    batch = args.micro_batch
    clips = batch * VIEWS
    common = dict(micro_batch=batch, num_frames=FRAMES, sampling="window", window_s=WINDOW_S, img_size=SIZE,
                  short_side=SHORT, repeat_aug=VIEWS, crop="random_resized", num_workers=workers,
                  prefetch=PREFETCH, shuffle_buffer=16, steps_per_epoch=10**6)
    rows = {
        "baseline per-file (source files)": lambda: DataLoader(PerFileClips(sources, 10**6), batch_size=batch,
                                                                shuffle=True, num_workers=workers, prefetch_factor=PREFETCH),
        "ours pyav, same bytes in shards": lambda: build_train_stream([str(sets["same"])], decoder="pyav", **common),
        "ours pyav, ppma-pack h264 gop 8": lambda: build_train_stream([str(sets["pack"])], decoder="pyav", **common),
        "ours pyav, ppma-pack h264 gop 8 --fps 12":
            lambda: build_train_stream([str(sets["pack12"])], decoder="pyav", **common),
        "ours pyav, ppma-pack h264 gop 32": lambda: build_train_stream([str(sets["pack32"])], decoder="pyav",
                                                                       **common),
    }
    if "vp9" in sets:
        rows["ours pyav, ppma-pack vp9 gop 8"] = lambda: build_train_stream([str(sets["vp9"])], decoder="pyav",
                                                                           **common)
        if has_dali:
            rows["ours dali cpu, ppma-pack vp9 gop 8"] = lambda: build_train_stream([str(sets["vp9"])],
                                                                                   decoder="dali", **common)
    results: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(args.rounds):  # interleaved rounds: load drift hits every row alike
        for name, make in rows.items():
            rate = clips_per_second(make(), clips, workers, PREFETCH, timed=max(args.batches, 2 * workers))
            results[name].append(rate)
            print(f"round {round_ + 1} {name}: {rate:.1f} clips/s", flush=True)
    base = statistics.median(results["baseline per-file (source files)"])
    table = []
    for name, rates in results.items():
        rate = statistics.median(rates)
        table.append({"loader": name, "clips_per_s": rate, "clips_per_s_per_core": rate / workers,
                      "videos_per_s_per_core": rate / workers / VIEWS, "vs_baseline": rate / base, "runs": rates})
    return {"workers": workers, "cpus": os.cpu_count(), "videos": args.videos, "seconds": args.seconds,
            "micro_batch": batch, "views": VIEWS, "torch_threads": torch.get_num_threads(), "rows": table}


def _packed(split: Path, out: Path, per_shard: int, workers: int, **encode) -> Path:
    encode = {"short_side": 320, "gop": 8, **encode}
    pack(split, out, max_samples=per_shard, workers=workers, progress=False, **encode)
    return out / "manifest.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".bench_out/data", help="where videos and shards are made (reused)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (= CPU cores used); 0: all")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per row and round (>= 2 x workers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-vp9", action="store_true", help="skip the VP9 rows (no VP9 encode, no DALI)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    result = run(args)
    print(f"\n{result['workers']} workers on {result['cpus']} CPUs; {VIEWS} views x {FRAMES} frames x {SIZE} px; "
          f"micro-batch {result['micro_batch']}; median of {args.rounds} rounds")
    print(f"{'loader':45s} {'clips/s':>9s} {'per core':>9s} {'x baseline':>11s}")
    for row in result["rows"]:
        print(f"{row['loader']:45s} {row['clips_per_s']:9.1f} {row['clips_per_s_per_core']:9.1f} "
              f"{row['vs_baseline']:11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

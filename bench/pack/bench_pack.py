"""Pack throughput: clips/s per core for H.264 and VP9 at short side 320 from 10 s 640x480 sources.

Baseline, measured in the same run: a plain PyAV transcode per file with the same settings (decode,
scale to 426x320 yuv420p, encode with the same encoder options, one thread per process) written to
a file, no sharding; run over the same files by 1 process and by 2 processes. Pack is timed with
--workers 1 and --workers 2. Overhead = pack time / baseline time - 1 at the same process count.

    python bench/pack/bench_pack.py [--clips 8] [--seconds 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av

from shards_tools.pack import pack
from shards_tools.synth import ClipSpec, render_clip
from shards_tools.transcode import DEFAULT_CRF, output_size
from shards_tools.videoio import CODECS, encode_video, encoder_options

SHORT_SIDE, GOP, PRESET = 320, 8, "veryfast"


def make_sources(folder: Path, clips: int, seconds: float, fps: int = 25) -> Path:
    """`clips` 640x480 H.264 sources of `seconds` s (stick figures over textured backgrounds)."""
    lines = []
    for index in range(clips):
        spec = ClipSpec("synthetic", index % 8, index, 8, int(seconds * fps), 480, 640, float(fps), 0)
        path = folder / f"src_{index:03d}.mp4"
        path.write_bytes(encode_video(render_clip(spec), fps, "h264", crf=18, gop=250, preset="medium"))
        lines.append(f"{path.name};{index % 8}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def plain_transcode(job: tuple[str, str, str]) -> None:
    """What `ffmpeg -i src -vf scale=-2:320 -c:v libx264 ... dst` does, through PyAV."""
    source, destination, codec = job
    encoder, container_format, _ = CODECS[codec]
    with av.open(source) as src, av.open(destination, "w", format=container_format) as dst:
        in_stream = src.streams.video[0]
        in_stream.codec_context.thread_count = 1
        width, height = output_size(in_stream.codec_context.width, in_stream.codec_context.height, SHORT_SIDE, False)
        rate = Fraction(in_stream.average_rate)
        out_stream = dst.add_stream(encoder, rate=rate)
        out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
        out_stream.options = encoder_options(codec, DEFAULT_CRF[codec], GOP, PRESET, 1)
        for index, frame in enumerate(src.decode(in_stream)):
            scaled = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
            scaled.pts, scaled.time_base = index, 1 / rate
            for packet in out_stream.encode(scaled):
                dst.mux(packet)
        for packet in out_stream.encode():
            dst.mux(packet)


def time_baseline(sources: list[Path], out: Path, codec: str, processes: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(s), str(out / f"{s.stem}.{CODECS[codec][2]}"), codec) for s in sources]
    start = time.perf_counter()
    if processes == 1:
        for job in jobs:
            plain_transcode(job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(plain_transcode, jobs))
    return time.perf_counter() - start


def time_pack(split: Path, out: Path, codec: str, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = pack(split, out, codec=codec, short_side=SHORT_SIDE, gop=GOP, preset=PRESET, workers=workers,
                    max_samples=4, progress=False, min_frames=1)
    elapsed = time.perf_counter() - start
    if manifest.num_samples != len(split.read_text().splitlines()):
        raise RuntimeError(f"pack rejected inputs: {manifest.rejected}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every measurement (min and median shown)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        (work / "src").mkdir()
        split = make_sources(work / "src", args.clips, args.seconds)
        sources = sorted((work / "src").glob("*.mp4"))
        print(f"# {args.clips} sources, {args.seconds:g} s 640x480 25 fps H.264 -> short side {SHORT_SIDE}; "
              f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, "
              f"PyAV {av.__version__}")
        print("| codec | procs | baseline s (min / median) | pack s (min / median) | baseline clips/s/core "
              "| pack clips/s/core | pack overhead (min) | (median) |")
        print("|---|---|---|---|---|---|---|---|")
        time_baseline(sources[:1], work / "warmup", "h264", 1)  # page cache, imports, encoder init
        best = {}
        for codec in ("h264", "vp9"):
            for procs in (1, 2):
                base_times, pack_times = [], []
                for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits both alike
                    base_times.append(time_baseline(sources, work / f"base_{codec}_{procs}", codec, procs))
                    pack_times.append(time_pack(split, work / f"pack_{codec}_{procs}", codec, procs))
                base, packed = min(base_times), min(pack_times)
                base_med, pack_med = statistics.median(base_times), statistics.median(pack_times)
                best[codec, procs] = packed
                per_core = args.clips / procs
                print(f"| {codec} | {procs} | {base:.2f} / {base_med:.2f} | {packed:.2f} / {pack_med:.2f} | "
                      f"{per_core / base:.2f} | {per_core / packed:.2f} | {100 * (packed / base - 1):+.1f}% | "
                      f"{100 * (pack_med / base_med - 1):+.1f}% |", flush=True)
        for codec in ("h264", "vp9"):
            print(f"{codec}: pack --workers 2 is {best[codec, 1] / best[codec, 2]:.2f}x as fast as --workers 1 "
                  "(best times)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

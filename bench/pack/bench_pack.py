"""Pack throughput: clips/s per core for H.264 and VP9 at short side 320 from 10 s 640x480 sources.

Baseline, measured in the same run: a plain PyAV transcode per file with the same settings (decode,
scale to 426x320 yuv420p, encode with the same encoder options, one FFmpeg thread per process)
written to a file, no sharding, over the same files by 1 and by 2 processes. Pack is run with
--workers 1 and --workers 2. Runs are interleaved (baseline, pack, baseline, ...).

Two clocks: wall time (best of N) and CPU time (user + sys of this process and its waited-for
children, best of N). On a shared machine the wall clock also counts other people's work; CPU
seconds per clip do not, so the overhead is read off CPU time, and wall time gives the scaling.
The main process's share of pack's CPU time is the serial part that bounds --workers scaling.

    python bench/pack/bench_pack.py [--clips 8] [--seconds 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av

from shards_tools.pack import pack
from shards_tools.synth import ClipSpec, render_clip
from shards_tools.transcode import DEFAULT_CRF, output_size
from shards_tools.videoio import CODECS, encode_video, encoder_options

SHORT_SIDE, GOP, PRESET = 320, 8, "veryfast"


@dataclass
class Run:
    wall: float
    cpu_main: float
    cpu_children: float

    @property
    def cpu(self) -> float:
        return self.cpu_main + self.cpu_children


def measure(work: Callable[[], None]) -> Run:
    def cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    main0, children0, start = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    work()
    return Run(time.perf_counter() - start, cpu(resource.RUSAGE_SELF) - main0,
               cpu(resource.RUSAGE_CHILDREN) - children0)


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


def run_baseline(sources: list[Path], out: Path, codec: str, processes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(s), str(out / f"{s.stem}.{CODECS[codec][2]}"), codec) for s in sources]
    if processes == 1:
        for job in jobs:
            plain_transcode(job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(plain_transcode, jobs))


def run_pack(split: Path, out: Path, codec: str, workers: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    manifest = pack(split, out, codec=codec, short_side=SHORT_SIDE, gop=GOP, preset=PRESET, workers=workers,
                    max_samples=4, progress=False, min_frames=1)
    if manifest.num_samples != len(split.read_text().splitlines()):
        raise RuntimeError(f"pack rejected inputs: {manifest.rejected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every measurement (best kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        (work / "src").mkdir()
        split = make_sources(work / "src", args.clips, args.seconds)
        sources = sorted((work / "src").glob("*.mp4"))
        print(f"# {args.clips} sources, {args.seconds:g} s 640x480 25 fps H.264 -> short side {SHORT_SIDE}; "
              f"{os.cpu_count()} cores, {platform.machine()}, Python {sys.version.split()[0]}, PyAV {av.__version__}, "
              f"load average at start {os.getloadavg()[0]:.1f}")
        print("| codec | procs | baseline wall s | pack wall s | baseline CPU s/clip | pack CPU s/clip "
              "| baseline clips/s/core | pack clips/s/core | pack overhead (CPU) | pack main-process CPU |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        run_baseline(sources[:1], work / "warmup", "h264", 1)  # page cache, imports, encoder init
        walls = {}
        for codec in ("h264", "vp9"):
            for procs in (1, 2):
                base_runs, pack_runs = [], []
                for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits both alike
                    base_runs.append(measure(lambda: run_baseline(sources, work / "base", codec, procs)))
                    pack_runs.append(measure(lambda: run_pack(split, work / "pack", codec, procs)))
                base_wall, pack_wall = min(r.wall for r in base_runs), min(r.wall for r in pack_runs)
                base_cpu = min(r.cpu for r in base_runs) / args.clips
                best_pack = min(pack_runs, key=lambda r: r.cpu)
                pack_cpu = best_pack.cpu / args.clips
                walls[codec, procs] = pack_wall
                main_share = f"{100 * best_pack.cpu_main / best_pack.cpu:.1f}%" if procs > 1 else "all (in-process)"
                print(f"| {codec} | {procs} | {base_wall:.2f} | {pack_wall:.2f} | {base_cpu:.3f} | {pack_cpu:.3f} | "
                      f"{1 / base_cpu:.2f} | {1 / pack_cpu:.2f} | {100 * (pack_cpu / base_cpu - 1):+.1f}% | "
                      f"{main_share} |", flush=True)
        for codec in ("h264", "vp9"):
            print(f"{codec}: pack --workers 2 wall time is {walls[codec, 1] / walls[codec, 2]:.2f}x faster than "
                  "--workers 1 (best of runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

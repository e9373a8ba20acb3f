"""`ppma-verify`: check a shard set before a training run depends on it.

For every shard (in parallel): the file exists, its size and sha256 match the manifest, the sample
count matches, every sample has a dot-free key, a label id within the class list that agrees with
its json (id, and label_name with the manifest's name for that id: a class list from another pack
would otherwise mislabel every sample), exactly one clip field, and a clip that decodes completely
to the frame count and size its json states. Keys must be unique across the set. Exit status 1 if anything is wrong.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
from tqdm import tqdm

from ppma_scale.data.manifest import SAMPLE_VIDEO_EXTENSIONS, load_manifest
from shards_tools.journal import sha256_file
from shards_tools.parallel import default_workers
from shards_tools.tario import iter_samples
from ppma_scale.cli import run_tool

EXPECTED_FIELDS = {"__key__", "__url__", "cls", "json"}
LABEL_NAME_MISMATCH = "label name differs from the manifest"
NOT_DECODED = "clip does not decode"

# Problem kinds the summary line counts; every other finding is OTHER.
UNDECODED, DECODED_OTHERWISE, UNREAD, RENAMED, OTHER = "undecoded", "decoded otherwise", "unread", "renamed", "other"


@dataclass(frozen=True)
class Problem:
    """One finding: where (shard file name, sample key) and what; `kind` lets the summary count
    findings without parsing their text. str() is the line ppma-verify prints."""

    text: str
    kind: str = OTHER
    shard: str | None = None
    sample: str | None = None

    def __str__(self) -> str:
        where = (f"{self.shard}: " if self.shard else "") + (f"sample {self.sample}: " if self.sample else "")
        return where + self.text


@dataclass
class ShardReport:
    url: str
    samples: int = 0
    frames: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _decode_count(data: bytes) -> tuple[int, int, int]:
    """Decode every frame; (frames, width, height)."""
    frames = width = height = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            frames += 1
            width, height = frame.width, frame.height
    return frames, width, height


def _check_sample(sample: dict, classes: list[str], decode: bool) -> tuple[list[Problem], int]:
    """The sample's problems (without their shard and key, which the caller knows) and its frames."""
    problems = []
    extra = set(sample) - EXPECTED_FIELDS - set(SAMPLE_VIDEO_EXTENSIONS)
    videos = [ext for ext in SAMPLE_VIDEO_EXTENSIONS if ext in sample]
    if len(videos) != 1:
        problems.append(Problem(f"expected one clip field (mp4 or webm), found {videos or 'none'}"))
    if extra:
        problems.append(Problem(f"unexpected fields {sorted(extra)}"))
    for name in ("cls", "json"):
        if name not in sample:
            problems.append(Problem(f"missing .{name}"))
    if problems:
        return problems, 0
    try:
        meta = json.loads(sample["json"])
        label = int(sample["cls"])
    except ValueError as exc:
        return [Problem(f"unparsable cls/json: {exc}")], 0
    if not isinstance(meta, dict):
        return [Problem(f"json is {type(meta).__name__}, not an object")], 0
    problems.extend(_label_problems(label, meta, classes))
    if not decode:
        return problems, int(meta.get("frames", 0))
    try:
        frames, width, height = _decode_count(sample[videos[0]])
    except (av.error.FFmpegError, IndexError) as exc:
        return problems + [Problem(f"{NOT_DECODED}: {exc}", UNDECODED)], 0
    if frames != meta.get("frames"):
        problems.append(Problem(f"decoded {frames} frames, json says {meta.get('frames')}", DECODED_OTHERWISE))
    if (width, height) != (meta.get("width"), meta.get("height")):
        problems.append(Problem(f"decoded {width}x{height}, json says {meta.get('width')}x{meta.get('height')}",
                                DECODED_OTHERWISE))
    return problems, frames


def _label_problems(label: int, meta: dict, classes: list[str]) -> list[Problem]:
    """The label id within the classes, the same in cls and json, and named as the manifest names it."""
    problems = []
    inside = 0 <= label < len(classes)
    if not inside:
        problems.append(Problem(f"label {label} outside the {len(classes)} classes"))
    if meta.get("label") != label:
        problems.append(Problem(f"cls says {label}, json says {meta.get('label')}"))
    name = meta.get("label_name")
    if inside and name is not None and name != classes[label]:
        problems.append(Problem(f"{LABEL_NAME_MISMATCH}: json names label {label} {name!r}, "
                                f"the manifest's classes[{label}] is {classes[label]!r}", RENAMED))
    return problems


def verify_shard(url: str, samples: int, size: int, sha256: str, classes: list[str],
                 decode: bool = True) -> ShardReport:
    """Check one tar against its manifest entry."""
    report = ShardReport(url)
    name = os.path.basename(url)
    if not os.path.isfile(url):
        report.problems.append(Problem("file is missing", UNREAD, name))
        return report
    if size and os.path.getsize(url) != size:
        report.problems.append(Problem(f"{os.path.getsize(url)} bytes, manifest says {size}", shard=name))
    if sha256 and sha256_file(Path(url)) != sha256:
        report.problems.append(Problem("sha256 differs from the manifest (file changed or damaged)", shard=name))
    try:
        for sample in iter_samples(url):
            key = sample["__key__"]
            report.samples += 1
            report.keys.append(key)
            problems, frames = _check_sample(sample, classes, decode)
            report.frames += frames
            report.problems.extend(replace(p, shard=name, sample=key) for p in problems)
    except Exception as exc:  # noqa: BLE001 - a damaged tar is a finding, not a crash
        report.problems.append(Problem(f"unreadable tar after {report.samples} samples: {type(exc).__name__}: {exc}",
                                       UNREAD, name))
    if report.samples != samples:
        report.problems.append(Problem(f"holds {report.samples} samples, manifest says {samples}", UNREAD, name))
    return report


def verify(manifest_path: str | Path, workers: int | None = None, decode: bool = True,
           progress: bool = True) -> list[Problem]:
    """All problems found in the shard set (empty list = healthy)."""
    manifest = load_manifest(manifest_path)
    workers = workers or default_workers()
    jobs = [(url, s.samples, s.bytes, s.sha256, list(manifest.classes), decode)
            for url, s in zip(manifest.shard_urls(), manifest.shards)]
    bar = tqdm(total=len(jobs), unit="shard", disable=not progress, desc="verify")
    reports = []
    if workers == 1:
        for job in jobs:
            reports.append(verify_shard(*job))
            bar.update(1)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for report in pool.map(verify_shard, *zip(*jobs)) if jobs else []:
                reports.append(report)
                bar.update(1)
    bar.close()
    problems = [p for r in reports for p in r.problems]
    seen: dict[str, str] = {}
    for report in reports:
        for key in report.keys:
            if "." in key:
                problems.append(Problem(f"key {key!r} contains a dot", shard=os.path.basename(report.url)))
            if key in seen:
                problems.append(Problem(f"key {key!r} appears in {os.path.basename(seen[key])} and "
                                        f"{os.path.basename(report.url)}"))
            seen[key] = report.url
    renamed = sum(p.kind == RENAMED for p in problems)
    if renamed:
        problems.append(Problem(f"{renamed} samples' label_name differ from the manifest's class list: the "
                                f"manifest's `classes` {manifest.classes[:6]} does not match these shards "
                                "(copied from another pack?)"))
    declared = manifest.totals.get("samples")
    if declared is not None and declared != manifest.num_samples:
        problems.append(Problem(f"manifest totals say {declared} samples, its shards list {manifest.num_samples}"))
    if decode and "frames" in manifest.totals and problems == [] and \
            sum(r.frames for r in reports) != manifest.totals["frames"]:
        problems.append(Problem(f"decoded {sum(r.frames for r in reports)} frames, manifest totals say "
                                f"{manifest.totals['frames']}"))
    return problems


def decode_summary(problems: list[Problem]) -> str:
    """The decoding part of the summary line: how many clips failed to decode (or decoded to other
    frames / size than their json), and "every clip decoded" only when that is true."""
    failed = sum(p.kind == UNDECODED for p in problems)
    otherwise = len({(p.shard, p.sample) for p in problems if p.kind == DECODED_OTHERWISE})  # frames and size alike
    unread = len({p.shard for p in problems if p.kind == UNREAD})
    parts = []
    if failed:
        parts.append(f"{failed} clip(s) failed to decode")
    if otherwise:
        parts.append(f"{otherwise} clip(s) decoded to other frames/size than their json")
    if unread:
        parts.append(f"{unread} shard(s) missing or not read to the end (their clips unchecked)")
    return ", " + ", ".join(parts) if parts else ", every clip decoded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppma-verify", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("manifest", type=Path, help="manifest.json or the folder holding it")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--no-decode", action="store_true", help="check files and metadata only")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    def work() -> int:
        manifest = load_manifest(args.manifest)
        problems = verify(args.manifest, args.workers, not args.no_decode, not args.quiet)
        for problem in problems:
            print(problem)
        status = "FAILED" if problems else "OK"
        print(f"{status}: {len(manifest.shards)} shards, {manifest.num_samples} samples, {len(problems)} problem(s)"
              + ("" if args.no_decode else decode_summary(problems)), file=sys.stderr)
        return 1 if problems else 0
    return run_tool("ppma-verify", work)


if __name__ == "__main__":
    raise SystemExit(main())

"""`ppma-pack`: video files (+ a split file, CSV or class folders) -> WebDataset tar shards + manifest.json.

Each input is re-encoded (see `transcode.py`) in parallel worker processes; results are written in
input order (shuffled once by `--shuffle-seed`, so shards mix classes), so the shards do not depend
on the number of workers. A sample is `{key}.mp4|webm`, `{key}.cls` (label id), `{key}.json`
(label, label_name, dataset, source, fps, frames, width, height, duration, codec, ...).

Re-running the same command after an interruption (kill -9 included) keeps the finished shards and
goes on from the first unfinished one; `manifest.json` is written last, so its presence means done.
Shards the job did not write (another job's, or ones no journal vouches for) are never deleted or
overwritten without `--overwrite`, which repacks from scratch (and so retries rejected inputs).
A finished set is reused only while its shards still have the sizes its manifest records.

One job at a time writes a folder: a second `ppma-pack` on the same `--output` stops with an error
naming the job that holds it (see `journal.OutputLock`). Ctrl-C stops a job with one line; the
same command resumes it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ppma_scale.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest, name_some
from shards_tools.inputs import FORMATS, SourceItem, ids_without_clips, listing_root, read_inputs
from shards_tools.journal import Journal, OutputLock, ShardFile, remove_unlisted_shards, shard_files
from shards_tools.parallel import ItemResult, default_workers, encode_in_order, encode_item
from shards_tools.transcode import DEFAULT_CRF, EncodeSettings
from shards_tools.videoio import video_extension
from ppma_scale.cli import run_tool

TOOL_VERSION = 1
TAR_OVERHEAD = 3 * 1024  # three tar headers + block padding per sample (upper bound), for --max-size
EXIT_INTERRUPTED = 130  # the shell's code for a job stopped by SIGINT


class PackInterrupted(KeyboardInterrupt):
    """Ctrl-C during a pack; `packed` clips are in journaled shards, which the same command keeps."""

    def __init__(self, packed: int):
        super().__init__(packed)
        self.packed = packed


def sample_key(item: SourceItem) -> str:
    """Unique, dot-free key: the input's listing index plus a readable slug of its path."""
    stem = item.source.rsplit(".", 1)[0] if "." in Path(item.source).name else item.source
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[-80:]
    return f"{item.index:08d}_{slug}" if slug else f"{item.index:08d}"


def parse_size(text: str | int | None) -> int | None:
    """'500MB', '1.5G', '2e9', 1000 -> bytes (powers of 1024 for K/M/G/T)."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"--max-size {text!r} is not a size (examples: 500MB, 1GB, 200000000)")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def _fingerprint(ordered: list[SourceItem], names: list[str], options: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps({"options": options, "classes": names}, sort_keys=True).encode())
    for item in ordered:
        digest.update(f"{item.index}\t{item.source}\t{item.label}\n".encode())
    return digest.hexdigest()


def _refuse(output: Path, prefix: str, what: str) -> ValueError:
    """The error for a folder holding files this job would delete or overwrite, naming them."""
    files = [p.name for p in shard_files(output, prefix)]
    if (output / MANIFEST_NAME).is_file():
        files.append(MANIFEST_NAME)
    return ValueError(f"output folder {output} already holds {what}; packing there would delete or overwrite "
                      f"{name_some(files)}: choose a new --output or pass --overwrite to replace them")


def _old_manifest_shards(output: Path) -> list[Path]:
    """The tars a manifest in `output` lists by bare name (they go with it on --overwrite, whatever their prefix)."""
    try:
        manifest = load_manifest(output / MANIFEST_NAME)
    except (OSError, ValueError):
        return []  # absent or unreadable: only the prefix's tars are known to be part of the old set
    return [output / s.url for s in manifest.shards if re.fullmatch(r"[^/\\:]+\.tar", s.url)]


def _clear_output(output: Path, prefix: str, journal: Journal) -> None:
    """--overwrite: start this job afresh. Its empty journal goes first, so an interruption from here on
    leaves a pack that the same command (without --overwrite) resumes, never a folder no job owns."""
    old_shards = _old_manifest_shards(output)
    journal.start([])
    (output / MANIFEST_NAME).unlink(missing_ok=True)
    for path in old_shards:
        path.unlink(missing_ok=True)
    remove_unlisted_shards(output, prefix, keep=set())


def _prepare_output(output: Path, fingerprint: str, prefix: str, overwrite: bool) -> Manifest | None:
    """Return the finished manifest if this exact job is already done; otherwise leave `output` ready for
    this job (resumable from its own journal, or cleared with `overwrite`). Never deletes or
    overwrites shards this job did not write unless `overwrite`."""
    output.mkdir(parents=True, exist_ok=True)
    manifest_path = output / MANIFEST_NAME
    journal = Journal(output, fingerprint)
    if overwrite:
        _clear_output(output, prefix, journal)
        return None
    existing = load_manifest(manifest_path) if manifest_path.is_file() else None
    if existing is not None and existing.settings.get("fingerprint") == fingerprint:
        return existing
    recorded = journal.recorded_fingerprint()
    if existing is not None or recorded not in (None, fingerprint):
        raise _refuse(output, prefix, "a shard set packed from other inputs or settings (or another --root)")
    if recorded is None and shard_files(output, prefix):
        raise _refuse(output, prefix, f"{prefix}-*.tar shards but no {MANIFEST_NAME} or pack journal saying "
                      "which job wrote them")
    return None


def _encode_listed(item: SourceItem, settings: EncodeSettings) -> ItemResult:
    """Encode an input, or reject it with the reason the listing already gave (e.g. no class folder).
    In a worker process Ctrl-C is left to the parent (which stops the pool and reports once); a
    worker's own KeyboardInterrupt would only add a traceback per worker."""
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if item.reason is not None:
        return ItemResult(item, reason=item.reason)
    return encode_item(item, settings)


def _check_output_folder(output: Path) -> None:
    """`--output` names a folder: one that exists, or one that can be created (no file on its way)."""
    for path in (output, *output.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            what = "a file" if path.is_file() else "not a folder"
            raise ValueError(f"--output must be a folder; {path} is {what}" +
                             ("" if path == output else f" (on the way to {output})"))


def _damaged_shards(output: Path, manifest: Manifest) -> list[str]:
    """The finished set's shards that are gone or no longer have the size its manifest records."""
    damaged = []
    for shard in manifest.shards:
        try:
            size = (output / shard.url).stat().st_size
        except FileNotFoundError:
            damaged.append(f"{shard.url} (missing)")
            continue
        if size != shard.bytes:
            damaged.append(f"{shard.url} ({size} bytes, the manifest says {shard.bytes})")
    return damaged


def _report_reused(output: Path, manifest: Manifest) -> None:
    """A finished set is reused as is: say so, and that its rejected inputs stay rejected."""
    print(f"{output}: already packed ({manifest.num_samples} clips); nothing to do", file=sys.stderr)
    if manifest.rejected:
        print(f"{output}: {len(manifest.rejected)} input(s) were rejected by that pack (listed in {MANIFEST_NAME}) "
              "and are not retried; once they are fixed, rerun with --overwrite to repack them", file=sys.stderr)


def _stop(results: Any, writer: "_SpanWriter", bar: tqdm) -> None:
    """After Ctrl-C: stop the workers and drop the unfinished shard. The journal is left as it is: it
    lists only finished shards (a torn last line is ignored), so the same command resumes after them."""
    try:
        results.close()  # shuts the worker pool down
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: the workers exit with this process (they watch their parent)
    finally:
        writer.discard()
        bar.close()


def _sample(result, dataset: str, names: list[str], extension: str) -> dict[str, Any]:
    item = result.item
    meta = {"label": item.label, "label_name": names[item.label], "dataset": dataset, "source": item.source,
            **result.meta}
    return {"__key__": sample_key(item), extension: result.data, "cls": str(item.label).encode(),
            "json": json.dumps(meta).encode()}


def _manifest(entries: list[dict[str, Any]], dataset: str, names: list[str], settings: dict[str, Any]) -> Manifest:
    shards = [ShardInfo(e["url"], e["samples"], e["bytes"], e["sha256"]) for e in entries if e["url"]]
    rejected = sorted((r for e in entries for r in e["rejected"]), key=lambda r: r["index"])
    totals = {"samples": sum(s.samples for s in shards), "shards": len(shards),
              "frames": sum(e["frames"] for e in entries), "hours": sum(e["seconds"] for e in entries) / 3600,
              "bytes": sum(s.bytes for s in shards), "rejected": len(rejected)}
    return Manifest(dataset=dataset, classes=names, shards=shards, totals=totals, settings=settings,
                    rejected=[{"source": r["source"], "reason": r["reason"]} for r in rejected])


class _SpanWriter:
    """Cuts the ordered results into shards. Each finished shard becomes one journal entry covering
    a span of input positions, with the inputs rejected inside that span."""

    def __init__(self, output: Path, prefix: str, journal: Journal, entries: list[dict[str, Any]],
                 max_samples: int, max_size: int | None):
        self.output, self.prefix, self.journal, self.entries = output, prefix, journal, entries
        self.max_samples, self.max_size = max_samples, max_size
        self.shard: ShardFile | None = None
        self.shard_number = sum(1 for e in entries if e["url"])
        self.span_start = entries[-1]["end"] if entries else 0
        self.rejected: list[dict[str, Any]] = []
        self.rejected_count = sum(len(e["rejected"]) for e in entries)

    def reject(self, item: SourceItem, reason: str) -> None:
        self.rejected.append({"index": item.index, "source": item.source, "reason": reason})
        self.rejected_count += 1

    def add(self, position: int, sample: dict[str, Any], meta: dict[str, Any]) -> None:
        size = sum(len(v) for k, v in sample.items() if k != "__key__") + TAR_OVERHEAD
        if self.shard is not None and (self.shard.samples >= self.max_samples or
                                       (self.max_size is not None and self.shard.size_with(size) > self.max_size)):
            self._close_span(position)
        if self.shard is None:
            self.shard = ShardFile(self.output, f"{self.prefix}-{self.shard_number:06d}.tar")
        self.shard.write(sample, meta["frames"], meta["duration"])

    def finish(self, end: int) -> None:
        if self.shard is not None or self.rejected or self.span_start < end:
            self._close_span(end)

    def discard(self) -> None:
        """Drop the shard being written (not journaled, so a resume redoes its span), and the temporary
        file of one that a Ctrl-C caught while it was being opened, before this writer held it (one
        job per output, under its lock: any such file is this job's)."""
        if self.shard is not None:
            self.shard.discard()
            self.shard = None
        for tmp in self.output.glob(f".{self.prefix}-*.tar.tmp"):
            tmp.unlink(missing_ok=True)

    def _close_span(self, end: int) -> None:
        info = {"url": None, "samples": 0, "bytes": 0, "sha256": "", "frames": 0, "seconds": 0.0}
        if self.shard is not None:
            info = self.shard.finish()
            self.shard_number += 1
        entry = {**info, "start": self.span_start, "end": end, "rejected": self.rejected}
        self.journal.append(entry)
        self.entries.append(entry)
        self.shard, self.span_start, self.rejected = None, end, []


def pack(source: str | Path, output: str | Path, *, root: str | Path | None = None,
         classes: str | Path | None = None, input_format: str = "auto", dataset: str | None = None,
         max_samples: int = 1000, max_size: int | str | None = "1GB", workers: int | None = None,
         shuffle_seed: int | None = 0, prefix: str = "shard", overwrite: bool = False, progress: bool = True,
         **encode_options: Any) -> Manifest:
    """Pack the clips listed by `source` into shards under `output`; returns the manifest.

    `encode_options` are `EncodeSettings` fields (codec, short_side, fps, max_duration, gop, crf,
    preset, min_frames, copy, upscale, frames_fps). Resumes an interrupted run of the same job.
    """
    settings = EncodeSettings(**encode_options)
    max_size = parse_size(max_size)
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be positive, got {max_size}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"shard prefix {prefix!r} may hold only letters, digits, '_' and '-'")
    output = Path(output)
    _check_output_folder(output)
    if Path(source).is_dir() and output.resolve() == Path(source).resolve():
        raise ValueError(f"--output {output} is the input folder itself: its shards would be listed as inputs "
                         "on the next run; choose another folder (a new sub-folder of it is fine)")
    items, names = read_inputs(source, root, classes, input_format, exclude=output)
    empty = ids_without_clips(items, names)
    if empty:
        print(f"WARNING: {source} gives no class names, so the classes are its label ids 0..{len(names) - 1}, and "
              f"{len(empty)} of them ({', '.join(map(str, empty[:10]))}{', ...' if len(empty) > 10 else ''}) have no "
              f"clip: a model trained on this pack gets {len(names)} outputs. If the ids are 1-based or the listing "
              "holds a subset of the classes, pass --classes NAMES.txt (line i names label i)", file=sys.stderr)
    dataset = dataset or output.name
    ordered = list(items)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ordered)
    options = {"encode": settings.to_json(), "max_samples": max_samples, "max_size": max_size, "prefix": prefix,
               "shuffle_seed": shuffle_seed, "dataset": dataset, "tool_version": TOOL_VERSION,
               "root": str(listing_root(source, root).resolve())}
    fingerprint = _fingerprint(ordered, names, options)
    output.mkdir(parents=True, exist_ok=True)
    with OutputLock(output):  # held until the manifest is written: one job at a time writes a folder
        return _pack_locked(source, output, ordered, names, options, fingerprint, settings, dataset=dataset,
                            prefix=prefix, overwrite=overwrite, workers=workers, progress=progress)


def _pack_locked(source: str | Path, output: Path, ordered: list[SourceItem], names: list[str],
                 options: dict[str, Any], fingerprint: str, settings: EncodeSettings, *, dataset: str, prefix: str,
                 overwrite: bool, workers: int | None, progress: bool) -> Manifest:
    max_samples, max_size = options["max_samples"], options["max_size"]
    finished = _prepare_output(output, fingerprint, prefix, overwrite)
    if finished is not None:
        damaged = _damaged_shards(output, finished)
        if damaged:
            raise ValueError(f"{output} holds this job's finished set, but {len(damaged)} of its "
                             f"{len(finished.shards)} shard(s) are missing or changed size since it was packed: "
                             f"{name_some(damaged)}; the set is not reused: rerun with --overwrite to repack it")
        if progress or finished.rejected:
            _report_reused(output, finished)
        return finished

    journal = Journal(output, fingerprint)
    entries = journal.entries()
    journal.start(entries)
    remove_unlisted_shards(output, prefix, keep={e["url"] for e in entries if e["url"]})
    position = entries[-1]["end"] if entries else 0
    writer = _SpanWriter(output, prefix, journal, entries, max_samples, max_size)
    extension = video_extension(settings.codec)
    workers = workers or default_workers()
    started, packed = time.time(), 0
    bar = tqdm(total=len(ordered), initial=position, unit="file", disable=not progress, smoothing=0.05,
               dynamic_ncols=True, desc=f"pack {dataset}")
    results = encode_in_order(ordered[position:], settings, workers, encode=_encode_listed)
    try:
        for here, result in enumerate(results, start=position):
            if result.reason is not None:
                writer.reject(result.item, result.reason)
            else:
                writer.add(here, _sample(result, dataset, names, extension), result.meta)
                packed += 1
            bar.update(1)
            bar.set_postfix(shards=writer.shard_number, rejected=writer.rejected_count, refresh=False)
        writer.finish(len(ordered))
    except KeyboardInterrupt:
        _stop(results, writer, bar)
        raise PackInterrupted(sum(e["samples"] for e in entries)) from None
    bar.close()
    manifest = _manifest(entries, dataset, names, {**options, "fingerprint": fingerprint, "source": str(source),
                                                   "workers": workers})
    manifest.location = str(output)
    manifest.save(output)
    if progress:
        elapsed = time.time() - started
        print(f"{output}: {manifest.num_samples} clips in {len(manifest.shards)} shards "
              f"({manifest.totals['bytes'] / 2**20:.1f} MiB, {manifest.totals['hours']:.3f} h of video); "
              f"{len(manifest.rejected)} rejected (listed in {MANIFEST_NAME}"
              f"{'; fix them and rerun with --overwrite to retry' if manifest.rejected else ''}); "
              f"{packed} encoded this run in {elapsed:.1f} s", file=sys.stderr)
    return manifest


class _DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" only where the help text does not already state its default, and never
    "(default: None)" (a None default means "not given": the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "(default" in text or \
                isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # a flag: off unless given
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppma-pack", description=__doc__.split("\n\n")[0],
                                     formatter_class=_DefaultsOnceFormatter, allow_abbrev=False)
    parser.add_argument("source", type=Path, help="split file (`path;label`), CSV (path,label|label_name) or class folders")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for the shards and manifest.json")
    parser.add_argument("--root", type=Path, default=None, help="folder the listed paths are relative to "
                        "(default: the split file's folder)")
    parser.add_argument("--classes", type=Path, default=None, help="class-names file, one per line (line = label id)")
    parser.add_argument("--format", dest="input_format", choices=FORMATS, default="auto",
                        help="how SOURCE lists the clips (auto: by its suffix / being a folder)")
    parser.add_argument("--dataset", default=None, help="dataset name in the manifest (default: output folder name)")
    group = parser.add_argument_group("encoding")
    group.add_argument("--codec", choices=("h264", "vp9"), default="h264",
                       help="h264: NVDEC on GPUs; vp9: also decodable by DALI on a CPU")
    group.add_argument("--short-side", type=int, default=320, help="scale clips to this shorter side in pixels")
    group.add_argument("--upscale", action="store_true", help="also scale sources smaller than --short-side up")
    group.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: keep)")
    group.add_argument("--max-duration", type=float, default=None, help="keep at most this many seconds")
    group.add_argument("--gop", type=int, default=EncodeSettings.gop,
                       help="keyframe interval in frames (short: cheaper seeks, long: smaller shards)")
    group.add_argument("--crf", type=int, default=None, help="quality, lower is better (default: "
                       + ", ".join(f"{crf} for {codec}" for codec, crf in DEFAULT_CRF.items()) + ")")
    group.add_argument("--preset", default="veryfast", help="x264 preset")
    group.add_argument("--min-frames", type=int, default=16, help="reject clips with fewer output frames")
    group.add_argument("--copy", action="store_true", help="keep the source stream when it already fits "
                       "(codec, 8-bit 4:2:0, size, frame rate, and keyframes at least every --gop frames)")
    group.add_argument("--frames-fps", type=float, default=25.0, help="frame rate of JPEG-frame folders")
    group = parser.add_argument_group("shards")
    group.add_argument("--max-samples", type=int, default=1000, help="samples per shard at most")
    group.add_argument("--max-size", default="1GB", help="bytes per shard at most (e.g. 500MB)")
    group.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar")
    group.add_argument("--shuffle-seed", type=int, default=0, help="input order shuffle (mixes classes in shards)")
    group.add_argument("--no-shuffle", action="store_true", help="keep the listing order")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="repack from scratch, replacing the shard set "
                        "in --output (retries rejected inputs; rerun without it to resume an interrupted pack)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    def work() -> int:
        manifest = pack(args.source, args.output, root=args.root, classes=args.classes,
                        input_format=args.input_format, dataset=args.dataset, max_samples=args.max_samples,
                        max_size=args.max_size, workers=args.workers,
                        shuffle_seed=None if args.no_shuffle else args.shuffle_seed, prefix=args.prefix,
                        overwrite=args.overwrite, progress=not args.quiet, codec=args.codec,
                        short_side=args.short_side, fps=args.fps, max_duration=args.max_duration, gop=args.gop,
                        crf=args.crf, preset=args.preset, min_frames=args.min_frames, copy=args.copy,
                        upscale=args.upscale, frames_fps=args.frames_fps)
        if manifest.num_samples == 0:
            print(f"ppma-pack: error: no input could be packed; reasons are in {args.output / MANIFEST_NAME}",
                  file=sys.stderr)
            return 1
        return 0
    try:
        return run_tool("ppma-pack", work)
    except KeyboardInterrupt as exc:
        done = f" ({exc.packed} clips packed so far)" if isinstance(exc, PackInterrupted) else ""
        print(f"ppma-pack: interrupted; rerun the same command to resume{done}", file=sys.stderr)
        return EXIT_INTERRUPTED

if __name__ == "__main__":
    raise SystemExit(main())

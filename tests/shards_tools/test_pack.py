"""pack: messy real inputs with 2 workers, determinism, shard sizing, resume after kill -9, crash isolation."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import pytest

from ppma_scale.data.manifest import load_manifest
from shards_tools import pack as pack_module
from shards_tools.inputs import NON_UTF8_REASON, SourceItem
from shards_tools.journal import Journal
from shards_tools.pack import pack, parse_size, sample_key
from shards_tools.parallel import CRASH_REASON, ItemResult, encode_in_order, encode_item
from shards_tools.synth import render_corpus
from shards_tools.tario import iter_samples
from shards_tools.transcode import EncodeSettings
from shards_tools.verify import verify

JSON_FIELDS = {"label", "label_name", "dataset", "source", "fps", "frames", "width", "height", "duration", "codec"}


@pytest.fixture(scope="module")
def messy_pack(messy_corpus, tmp_path_factory):
    split, bad, good = messy_corpus
    out = tmp_path_factory.mktemp("messy_pack")
    return pack(split, out, max_samples=3, workers=2, short_side=48, progress=False), bad, good


def test_bad_inputs_are_rejected_with_reasons_and_good_ones_packed(messy_pack):
    manifest, bad, good = messy_pack
    assert {r["source"] for r in manifest.rejected} == set(bad)
    for rejected in manifest.rejected:
        assert rejected["reason"].startswith(bad[rejected["source"]]), rejected
    assert manifest.num_samples == len(good) and manifest.totals["rejected"] == len(bad)
    assert manifest.classes == ["a", "b", "c", "d"]
    assert [s.samples for s in manifest.shards] == [3, 3, 3, 2]


def test_every_sample_is_well_formed_8bit_420(messy_pack):
    manifest, _, good = messy_pack
    sources, frames = [], 0
    for url in manifest.shard_urls():
        for sample in iter_samples(url):
            meta = json.loads(sample["json"])
            assert JSON_FIELDS <= set(meta) and "." not in sample["__key__"]
            assert int(sample["cls"]) == meta["label"] and meta["label_name"] == manifest.classes[meta["label"]]
            with av.open(io.BytesIO(sample["mp4"])) as container:
                ctx = container.streams.video[0].codec_context
                assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
                assert ctx.width % 2 == 0 and ctx.height % 2 == 0 and min(ctx.width, ctx.height) == 48
            sources.append(meta["source"])
            frames += meta["frames"]
    assert sorted(sources) == sorted(good) and frames == manifest.totals["frames"]
    assert verify(manifest.location, workers=2, progress=False) == []


def test_rerun_is_a_no_op_and_another_job_needs_overwrite(messy_corpus, messy_pack, tmp_path):
    manifest, _, _ = messy_pack
    split, _, _ = messy_corpus
    before = {p.name: p.stat().st_mtime_ns for p in sorted(os.scandir(manifest.location), key=lambda e: e.name)}
    again = pack(split, manifest.location, max_samples=3, workers=2, short_side=48, progress=False)
    assert again.to_json() == manifest.to_json()
    assert {p.name: p.stat().st_mtime_ns for p in os.scandir(manifest.location)} == before
    with pytest.raises(ValueError, match="other inputs or settings.*--overwrite"):
        pack(split, manifest.location, max_samples=3, workers=2, short_side=32, progress=False)


def _tiny_corpus(root, clips=6, frames=20, size=(64, 48), workers=1):
    return render_corpus("synthetic", root, num_classes=2, clips_per_class=clips, frames=frames, width=size[0],
                         height=size[1], val_fraction=0.0, workers=workers)


def _layout(manifest) -> list[list[tuple[str, bytes, bytes]]]:
    """Per shard: (key, cls, json) of every sample in order: everything but the encoded bytes, which
    x264 was seen to vary by a byte or two in rare I-frames between processes under heavy load."""
    return [[(s["__key__"], s["cls"], s["json"]) for s in iter_samples(url)] for url in manifest.shard_urls()]


def test_shard_contents_and_order_do_not_depend_on_worker_count(tmp_path):
    corpus = _tiny_corpus(tmp_path / "src")
    one = pack(corpus["train"], tmp_path / "w1", max_samples=4, workers=1, short_side=48, progress=False, dataset="d")
    two = pack(corpus["train"], tmp_path / "w2", max_samples=4, workers=2, short_side=48, progress=False, dataset="d")
    assert _layout(one) == _layout(two) and [len(shard) for shard in _layout(one)] == [4, 4, 4]
    labels = [int(s["cls"]) for s in iter_samples(one.shard_urls()[0])]
    assert len(set(labels)) > 1, "the default shuffle should mix classes within a shard"
    keep = pack(corpus["train"], tmp_path / "ordered", max_samples=12, shuffle_seed=None, workers=1,
                short_side=48, progress=False)
    assert [s["__key__"] for s in iter_samples(keep.shard_urls()[0])] == sorted(
        s["__key__"] for s in iter_samples(keep.shard_urls()[0]))


def test_max_size_bounds_shards(tmp_path):
    corpus = _tiny_corpus(tmp_path / "src")
    manifest = pack(corpus["train"], tmp_path / "out", max_size="20KB", workers=1, short_side=48, progress=False,
                    codec="vp9")
    assert len(manifest.shards) > 1 and manifest.num_samples == 12
    for shard in manifest.shards:
        assert shard.bytes <= 20 * 1024 or shard.samples == 1
    assert parse_size("1.5GB") == int(1.5 * 2**30) and parse_size("512") == 512
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_kill_minus_9_then_rerun_finishes_without_reencoding(tmp_path):
    corpus = _tiny_corpus(tmp_path / "src", clips=20, frames=48, size=(160, 120), workers=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shards_tools", "pack", str(corpus["train"]), "-o", str(out), "--short-side", "120",
           "--max-samples", "2", "--workers", "2", "--quiet"]
    job = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while len(list(out.glob("shard-*.tar"))) < 2 and time.time() < deadline and job.poll() is None:
        time.sleep(0.005)
    workers = [int(p.name) for p in os.scandir("/proc") if p.name.isdigit() and _parent_pid(int(p.name)) == job.pid]
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (out / "manifest.json").exists(), "the pack finished before it could be interrupted"
    for path in out.glob("shard-*.tar"):  # no partial shard is ever visible under a final name
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) == 6
    # shards the journal records as finished must survive the rerun untouched (one renamed just
    # before the kill but not yet journaled may legitimately be redone)
    journal = Journal(out, Journal(out, "").recorded_fingerprint())
    finished = {e["url"]: ((out / e["url"]).stat().st_ino, (out / e["url"]).stat().st_mtime_ns)
                for e in journal.entries()}
    assert finished
    deadline = time.time() + 10  # orphaned encoders notice their parent is gone and exit
    while any(_running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert workers and not any(_running(pid) for pid in workers)

    assert subprocess.run(cmd).returncode == 0
    manifest = load_manifest(out)
    assert manifest.num_samples == 40 and len(manifest.shards) == 20
    for name, stat in finished.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat, f"{name} was rewritten"
    assert verify(out, workers=2, progress=False) == []
    clean = pack(corpus["train"], tmp_path / "clean", short_side=120, max_samples=2, workers=2, progress=False,
                 dataset="out")
    assert _layout(clean) == _layout(manifest)


def _stat(pid: int) -> list[str]:
    """[state, parent pid, ...] from /proc/PID/stat; [] once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def _parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's pid 1 may never reap orphans)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _crash_on_second(item: SourceItem, settings: EncodeSettings):
    if item.index == 1:
        os._exit(9)  # a native crash (segfault, OOM kill) takes the worker down with it
    return encode_item(item, settings)


def test_a_worker_crash_rejects_that_input_only(tmp_path):
    corpus = _tiny_corpus(tmp_path / "src", clips=3)
    root = corpus["root"]
    lines = corpus["train"].read_text().splitlines()
    items = [SourceItem(i, root / line.split(";")[0], line.split(";")[0], int(line.split(";")[1]))
             for i, line in enumerate(lines)]
    results = list(encode_in_order(items, EncodeSettings(short_side=48), workers=2, encode=_crash_on_second))
    assert [r.item.index for r in results] == list(range(len(items)))
    assert [r.reason for r in results].count(CRASH_REASON) == 1 and results[1].reason == CRASH_REASON
    assert all(r.data for i, r in enumerate(results) if i != 1)


def _crash_on_third_quickly(item: SourceItem, settings: EncodeSettings):
    if item.index == 3:
        time.sleep(0.1)
        os._exit(9)
    return ItemResult(item, b"x", {"frames": 1})


def test_a_worker_crash_while_the_packer_is_busy_rejects_that_input_only():
    """The pool breaks while the consumer is closing a shard (no result being awaited): the next
    hand-out fails, and that must be replayed like a crash seen in a result."""
    items = [SourceItem(i, Path(f"/nowhere/{i}.mp4"), f"{i}.mp4", 0) for i in range(12)]
    results = []
    for result in encode_in_order(items, EncodeSettings(), workers=2, window_per_worker=2,
                                  encode=_crash_on_third_quickly):
        results.append(result)
        time.sleep(0.25)  # fsync + sha256 of a closed shard
    assert [r.item.index for r in results] == list(range(12))
    assert [i for i, r in enumerate(results) if r.reason == CRASH_REASON] == [3]


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("nothing.mp4;0\n")
    assert pack_module.main([str(tmp_path / "list.txt"), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no input could be packed" in capsys.readouterr().err
    assert load_manifest(tmp_path / "out").rejected == [{"source": "nothing.mp4", "reason": "file not found"}]
    assert pack_module.main([str(tmp_path / "absent.txt"), "-o", str(tmp_path / "o2")]) == 2
    assert "absent.txt does not exist" in capsys.readouterr().err
    assert pack_module.main([str(tmp_path / "list.txt"), "-o", str(tmp_path / "o3"), "--max-size", "big"]) == 2


def test_class_folders_and_csv_inputs(tmp_path):
    corpus = _tiny_corpus(tmp_path / "src", clips=2)
    videos = corpus["root"] / "videos"
    by_folder = pack(videos, tmp_path / "folders", workers=1, short_side=48, progress=False)
    assert by_folder.classes == ["jump", "wave"] and by_folder.num_samples == 4
    rows = ["path,label_name"] + [f"videos/{name}/{name}_0000.mp4,{name}" for name in ("wave", "jump")]
    (corpus["root"] / "list.csv").write_text("\n".join(rows) + "\n")
    by_csv = pack(corpus["root"] / "list.csv", tmp_path / "csv", workers=1, short_side=48, progress=False,
                  shuffle_seed=None)
    metas = [json.loads(s["json"]) for s in iter_samples(by_csv.shard_urls()[0])]
    assert [(m["source"], m["label_name"]) for m in metas] == [("videos/wave/wave_0000.mp4", "wave"),
                                                               ("videos/jump/jump_0000.mp4", "jump")]


def test_a_file_name_that_is_not_utf8_is_rejected_alone(tmp_path):
    """A Latin-1 name from an old archive: that input is rejected with its name shown escaped, and
    the rest is packed (the name could not be written to the journal or manifest as it is)."""
    corpus = _tiny_corpus(tmp_path / "src", clips=2)
    videos = corpus["root"] / "videos"
    os.rename(videos / "jump" / "jump_0000.mp4", os.fsencode(videos / "jump") + b"/caf\xe9.mp4")
    manifest = pack(videos, tmp_path / "out", workers=1, short_side=48, progress=False)
    assert manifest.num_samples == 3
    assert manifest.rejected == [{"source": "jump/caf\\xe9.mp4", "reason": NON_UTF8_REASON}]
    os.rename(videos / "jump", os.fsencode(videos) + b"/j\xfcmp")
    with pytest.raises(ValueError, match=r"class folder names must be valid UTF-8.*rename j\\xfcmp"):
        pack(videos, tmp_path / "out2", workers=1, short_side=48, progress=False)


def test_sample_keys_are_unique_and_dot_free():
    key = sample_key(SourceItem(7, None, "a.b/c d.e.mp4", 0))
    assert key == "00000007_a_b_c_d_e" and "." not in key

"""Bad data never crashes or hangs a rank: bad samples skipped and named, bad shards reported once;
URL forms: brace patterns, `pipe:` only when allowed."""
from __future__ import annotations

import json
import logging
import re
import tarfile

import pytest

from ppma_scale.data.loader import build_train_stream
from ppma_scale.data.manifest import load_manifest

from .conftest import TINY_CLIP, take_keys


def stream(manifests, **kw):
    args = dict(TINY_CLIP, micro_batch=2, num_workers=2, prefetch=2, shuffle_buffer=4, seed=1)
    args.update(kw)
    return build_train_stream(manifests, **args)


def test_bad_samples_are_skipped_counted_and_named(make_shards, caplog):
    manifest = make_shards("a", [6, 6], bad={1: "garbage", 4: "nocls", 8: "novideo"})
    s = stream([manifest], max_decode_failures=0.5)
    with caplog.at_level(logging.WARNING, logger="ppma_scale.data"):
        keys = take_keys(s, 5)  # 10 clips out of the 9 good ones + refills: the epoch holds 12 positions
    assert len(keys) == 10
    assert not {"a_0001", "a_0004", "a_0008"} & {k for _, k in keys}
    stats = s.stats()
    assert stats["decode_failures"] == 3 and stats["samples"] == 10
    named = {f["key"]: f["reason"] for f in stats["failed"]}
    assert set(named) == {"a_0001", "a_0004", "a_0008"}
    assert "label" in named["a_0004"] and "video field" in named["a_0008"]
    assert "a_0001" in caplog.text


def test_too_many_decode_failures_stop_the_run_with_names(make_shards):
    manifest = make_shards("a", [60, 60], bad={i: "garbage" for i in range(0, 120, 4)})
    s = stream([manifest], num_workers=0, max_decode_failures=0.1)
    with pytest.raises(RuntimeError, match="max_decode_failures=0.1.*a_0"):
        take_keys(s, 60)


def test_missing_and_truncated_shards_are_reported_once_and_skipped(make_shards, tmp_path):
    manifest_path = make_shards("a", [5, 5, 5, 5])
    folder = manifest_path.parent
    s = stream([manifest_path], world_size=1)  # damage found during the run (at start-up it is an error)
    (folder / "a-0001.tar").unlink()  # missing
    data = (folder / "a-0002.tar").read_bytes()
    (folder / "a-0002.tar").write_bytes(data[: len(data) // 2])  # truncated mid-sample
    assert s.steps_per_epoch == 10  # from the manifest: every rank keeps its step count
    keys = take_keys(s, 20)  # two full epochs, no hang
    assert len(keys) == 40
    readable = {k for _, k in keys}
    assert not readable & {f"a_{i:04d}" for i in range(5, 10)}  # nothing from the missing shard
    problems = s.stats()["shard_problems"]
    assert sorted(p["url"].rsplit("/", 1)[1] for p in problems) == ["a-0001.tar", "a-0002.tar"]
    assert "cannot open" in problems[0]["reason"] or "cannot open" in problems[1]["reason"]
    assert any("truncated" in p["reason"] for p in problems)


@pytest.mark.parametrize("workers", [0, 2])
def test_missing_and_truncated_stream_shards_are_reported_once_and_skipped(make_shards, workers):
    """The same damage behind `pipe:` URLs (as for remote shards), read as forward-only streams: the
    stream of a missing file fails (cat exits 1) and the cut one breaks off inside a clip; each is
    reported once as truncated, what precedes the cut is still read, and nothing hangs."""
    manifest_path = make_shards("a", [5, 5, 5, 5])
    folder = manifest_path.parent
    piped = {"manifest": str(manifest_path), "shards": f"pipe:cat {folder}/a-{{0000..0003}}.tar"}
    s = stream([piped], world_size=1, allow_pipe=True, num_workers=workers)
    (folder / "a-0001.tar").unlink()  # missing
    cut = folder / "a-0002.tar"
    with tarfile.open(cut) as tar:  # cut inside the video of its third sample (a_0012)
        video = tar.getmember("a_0012.mp4")
    cut.write_bytes(cut.read_bytes()[: video.offset_data + video.size // 2])
    assert s.steps_per_epoch == 10
    keys = take_keys(s, 20)  # two full epochs, no hang
    assert len(keys) == 40
    readable = {k for _, k in keys}
    assert not readable & {f"a_{i:04d}" for i in range(5, 10)}  # nothing from the missing shard
    assert {"a_0010", "a_0011"} <= readable  # the cut shard's samples before the cut are read...
    assert not readable & {"a_0012", "a_0013", "a_0014"}  # ...and none from the cut on
    problems = s.stats()["shard_problems"]
    by_shard = {p["url"].rsplit("/", 1)[1]: p["reason"] for p in problems}
    assert len(problems) == 2 and set(by_shard) == {"a-0001.tar", "a-0002.tar"}, problems  # once each
    assert by_shard["a-0001.tar"] == "truncated: holds 0 readable samples, manifest says 5"
    assert by_shard["a-0002.tar"] == "truncated: holds 2 readable samples, manifest says 5"


def test_every_shard_missing_fails_clearly_instead_of_spinning(make_shards):
    manifest_path = make_shards("a", [4, 4])
    s = stream([manifest_path], num_workers=0)  # shards lost after start-up (before, it is an error)
    for tar in manifest_path.parent.glob("*.tar"):
        tar.unlink()
    s.ctx.max_unreadable_run = 50
    with pytest.raises(RuntimeError, match="could not be read"):
        take_keys(s, 1)


def test_brace_pattern_and_pipe_urls(make_shards, tmp_path):
    manifest_path = make_shards("a", [3, 3])
    folder = manifest_path.parent
    pattern = str(folder / "a-{0000..0001}.tar")
    expected = sorted(take_keys(stream([manifest_path]), 3))
    braced = {"manifest": str(manifest_path), "shards": pattern}
    assert sorted(take_keys(stream([braced]), 3)) == expected
    piped = {"manifest": str(manifest_path), "shards": f"pipe:cat {pattern}"}
    with pytest.raises(ValueError, match="allow_pipe"):
        stream([piped])
    assert sorted(take_keys(stream([piped], allow_pipe=True), 3)) == expected
    with pytest.raises(ValueError, match="expands to 1 URLs but the manifest lists 2"):
        stream([{"manifest": str(manifest_path), "shards": str(folder / "a-0000.tar")}])
    with pytest.raises(ValueError, match="allow_pipe"):
        stream([f"pipe:cat {manifest_path}"])
    from_pipe = {"manifest": f"pipe:cat {manifest_path}", "shards": pattern}
    assert sorted(take_keys(stream([from_pipe], allow_pipe=True), 3)) == expected
    assert load_manifest(manifest_path).num_samples == 6


def test_a_manifest_named_from_the_home_folder_is_found(make_shards, monkeypatch):
    """bash leaves `~` alone after `data.train=`, so the path arrives with it."""
    manifest_path = make_shards("a", [3, 3])
    monkeypatch.setenv("HOME", str(manifest_path.parent.parent))
    named = f"~/{manifest_path.parent.name}/{manifest_path.name}"
    assert load_manifest(named).num_samples == 6
    assert sorted(take_keys(stream([named]), 3)) == sorted(take_keys(stream([manifest_path]), 3))


def test_a_pipe_stream_is_read_forwards_once_per_shard(make_shards):
    """Reading a shuffled block from a forward-only stream must not reopen it for every sample."""
    from ppma_scale.data.consumer import _Consumer
    manifest_path = make_shards("a", [12, 12])
    piped = {"manifest": str(manifest_path), "shards": f"pipe:cat {manifest_path.parent}/a-{{0000..0001}}.tar"}
    s = stream([piped], allow_pipe=True, num_workers=0, shuffle_buffer=8, micro_batch=4)
    consumer = _Consumer(s.ctx, 0)
    keys = [k for batch in zip(range(6), consumer.batches(s._plan, s._cursors[0])) for k in batch[1]["key"]]
    assert sorted(keys) == [f"a_{i:04d}" for i in range(24)]
    assert consumer.reader.opens <= 4  # each shard opened about once, not once per sample


def test_user_errors_name_the_setting(make_shards):
    manifest = make_shards("a", [3])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        stream([manifest], micro_batch=2, world_size=2)
    with pytest.raises(ValueError, match="weight must be > 0"):
        stream([{"manifest": str(manifest), "weight": 0}])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stream(["/nonexistent/manifest.json"])
    with pytest.raises(ValueError, match="data.sampling"):
        stream([manifest], sampling="uniform")
    with pytest.raises(ValueError, match="augment.crop"):
        stream([manifest], crop="square")
    with pytest.raises(ValueError, match="give each entry a distinct"):
        stream([manifest, manifest])


def test_a_hand_written_manifest_with_bad_counts_is_named(make_shards):
    manifest_path = make_shards("a", [3, 3])
    data = json.loads(manifest_path.read_text())
    for bad in ("4", -1, 2.5, None):
        data["shards"][1]["samples"] = bad
        manifest_path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=rf"shards\[1\] \(a-0001.tar\) has samples {re.escape(repr(bad))}"):
            load_manifest(manifest_path)

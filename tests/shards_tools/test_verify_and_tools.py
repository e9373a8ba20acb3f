"""verify, stats and show on damaged copies of the tiny shard sets: a class list from another pack is
found, and a truncated shard is named instead of ending in a raw tarfile traceback."""
from __future__ import annotations

import re
import shutil
import tarfile

import pytest

from ppma_scale.data.manifest import load_manifest
from shards_tools import show as show_module
from shards_tools import stats as stats_module
from shards_tools import verify as verify_module


def copy_set(manifest_path, folder):
    shutil.copytree(manifest_path.parent, folder)
    return folder


def truncate(path, size: int | None = None) -> None:
    """Cut a tar inside a member (tarfile then raises), or at `size`."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100 if size is None else size])


def test_verify_reports_a_class_list_that_does_not_match_the_samples(tiny_shards, tmp_path, capsys):
    swapped = copy_set(tiny_shards["synthetic"], tmp_path / "swapped")
    manifest = load_manifest(swapped)
    manifest.classes = list(reversed(manifest.classes))  # as if copied from a pack with another class order
    manifest.save(swapped)
    problems = verify_module.verify(swapped, workers=1, decode=False, progress=False)
    mismatched = [str(p) for p in problems if "label name differs from the manifest" in str(p)]
    assert len(mismatched) == manifest.num_samples  # 4 classes reversed: every name moves
    assert "json names label 0 'wave', the manifest's classes[0] is 'walk'" in "\n".join(mismatched)
    assert any("does not match these shards" in str(p) for p in problems)
    capsys.readouterr()
    assert verify_module.main([str(swapped), "--workers", "1", "--quiet", "--no-decode"]) == 1


def test_stats_names_a_truncated_shard_and_counts_the_rest(tiny_shards, tmp_path, capsys):
    damaged = copy_set(tiny_shards["nohuman"], tmp_path / "damaged")
    shard = damaged / load_manifest(damaged).shards[1].url
    with tarfile.open(shard) as tar:  # where the third sample starts, and its video
        members = tar.getmembers()
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in members))
    third = [m for m in members if m.name.split(".", 1)[0] == keys[2]]
    video = max(third, key=lambda m: m.size)
    cuts = {  # cut -> this cut's reason: samples read before it, and how the shard ends
        700: "unreadable after 0 samples (ReadError: unexpected end of data)",  # inside the first member
        third[0].offset: "holds 2 samples, manifest says 4",  # between members: a clean but short tar
        video.offset_data + video.size // 2: "unreadable after 2 samples (ReadError: unexpected end of data)",
    }
    for size, reason in cuts.items():
        truncate(shard, size)
        stats = stats_module.collect_stats(damaged)
        assert stats["problems"] == [f"{shard}: {reason}"], (size, stats["problems"])
        assert stats["samples"] == 12 + int(re.search(r"\d+", reason).group())  # 3 whole shards + the cut one's start
        shutil.copy(tiny_shards["nohuman"].parent / shard.name, shard)
    truncate(shard)
    capsys.readouterr()
    assert stats_module.main([str(damaged)]) == 1
    out = capsys.readouterr()
    assert f"ppma-stats: error: {shard}" in out.err and "clips in 4 shards" in out.out


def test_show_names_an_unreadable_shard(tiny_shards, tmp_path, capsys):
    damaged = copy_set(tiny_shards["synthetic"], tmp_path / "damaged")
    shard = damaged / load_manifest(damaged).shards[1].url
    truncate(shard)
    out = tmp_path / "sheet.png"
    with pytest.raises(ValueError, match=rf"shard \S*{shard.name} is unreadable \(ReadError: unexpected end of data\)"):
        show_module.show(damaged, out, index=7)  # the last sample of the truncated second shard
    capsys.readouterr()
    assert show_module.main([str(damaged), "--index", "7", "-o", str(out)]) == 2
    assert shard.name in capsys.readouterr().err
    assert show_module.show(damaged, out, index=15) == out and out.is_file()  # other shards still show
    with pytest.raises(ValueError, match=rf"no sample with key 'nope'.*{shard.name} is unreadable"):
        show_module.show(damaged, out, key="nope")

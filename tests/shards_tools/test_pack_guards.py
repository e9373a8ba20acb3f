"""pack guards: never clobber shards it did not write, --overwrite repacks (and retries rejects), --root is
part of the job, stray files beside class folders are listed as rejected. Real PyAV-encoded clips."""
from __future__ import annotations

import json
import shutil

import pytest

from shards_tools import pack as pack_module
from shards_tools.inputs import STRAY_REASON
from shards_tools.journal import JOURNAL_NAME, Journal
from shards_tools.pack import pack
from shards_tools.synth import render_corpus

OPTIONS = {"workers": 1, "short_side": 32, "max_samples": 2, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """2 classes x 2 clips (real H.264 files) and a split file listing them."""
    return render_corpus("synthetic", tmp_path_factory.mktemp("guards"), num_classes=2, clips_per_class=2,
                         frames=20, width=64, height=48, val_fraction=0.0, workers=1)


def _stats(folder) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_shards_without_manifest_or_journal_are_refused_not_deleted(corpus, tmp_path):
    other = pack(corpus["train"], tmp_path / "other", **{**OPTIONS, "max_samples": 1})
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(tmp_path / "other/shard-000000.tar", out / "shard-000000.tar")  # a user's earlier shards,
    shutil.copy(tmp_path / "other/shard-000001.tar", out / "shard-000007.tar")  # their manifest moved away
    (out / "notes.txt").write_text("precious\n")
    before = _stats(out)
    with pytest.raises(ValueError, match=r"shard-000000\.tar, shard-000007\.tar.*--overwrite"):
        pack(corpus["train"], out, **OPTIONS)
    assert _stats(out) == before
    assert pack_module.main([str(corpus["train"]), "-o", str(out), "--short-side", "32", "--workers", "1",
                             "--quiet"]) == 2
    assert _stats(out) == before
    replaced = pack(corpus["train"], out, **OPTIONS, overwrite=True)
    assert replaced.num_samples == other.num_samples == 4
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert (out / "notes.txt").read_text() == "precious\n"


def test_an_interrupted_pack_of_the_same_job_still_resumes(corpus, tmp_path):
    out = tmp_path / "out"
    done = pack(corpus["train"], out, **{**OPTIONS, "max_samples": 1})
    # as if killed after the third shard was renamed into place but before it was journaled
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    (out / JOURNAL_NAME).write_text("\n".join(lines[:3]) + "\n")
    (out / "manifest.json").unlink()
    kept = {name: stat[:2] for name, stat in _stats(out).items() if name in ("shard-000000.tar", "shard-000001.tar")}
    resumed = pack(corpus["train"], out, **{**OPTIONS, "max_samples": 1})
    assert resumed.to_json() == done.to_json()
    assert {name: stat[:2] for name, stat in _stats(out).items() if name in kept} == kept


def test_an_interrupted_overwrite_leaves_a_pack_that_resumes(corpus, tmp_path):
    out = tmp_path / "out"
    pack(corpus["train"], out, **{**OPTIONS, "short_side": 24})
    new = pack(corpus["train"], out, **OPTIONS, overwrite=True)
    assert new.settings["encode"]["short_side"] == 32
    # an --overwrite run of that job killed right after clearing the folder: the job owns it, so the
    # same command without --overwrite finishes it instead of refusing
    pack_module._prepare_output(out, new.settings["fingerprint"], "shard", overwrite=True)
    assert not (out / "manifest.json").exists() and not list(out.glob("shard-*.tar"))
    assert Journal(out, "").recorded_fingerprint() == new.settings["fingerprint"]
    assert pack(corpus["train"], out, **OPTIONS).to_json() == new.to_json()


def test_overwrite_repacks_and_retries_inputs_that_were_rejected(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    lines = corpus["train"].read_text().splitlines()
    for line in lines[:2]:
        rel = line.split(";")[0]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus["root"] / rel, data / rel)
    (data / "split.txt").write_text("\n".join(lines) + "\n")
    first = pack(data / "split.txt", tmp_path / "out", **OPTIONS)
    assert (first.num_samples, len(first.rejected)) == (2, 2)
    for line in lines[2:]:  # the missing files arrive (an unfinished copy, a folder mounted late)
        rel = line.split(";")[0]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus["root"] / rel, data / rel)
    capsys.readouterr()
    again = pack(data / "split.txt", tmp_path / "out", **OPTIONS)
    assert again.to_json() == first.to_json()
    err = capsys.readouterr().err
    assert "2 input(s) were rejected" in err and "--overwrite" in err
    retried = pack(data / "split.txt", tmp_path / "out", **OPTIONS, overwrite=True)
    assert (retried.num_samples, retried.rejected) == (4, [])
    assert pack(data / "split.txt", tmp_path / "out", **OPTIONS, overwrite=True).to_json() == retried.to_json()


def test_the_root_is_part_of_the_job(corpus, tmp_path):
    split = tmp_path / "split.txt"
    shutil.copy(corpus["train"], split)
    wrong = pack(split, tmp_path / "out", root=tmp_path, **OPTIONS)
    assert wrong.num_samples == 0 and {r["reason"] for r in wrong.rejected} == {"file not found"}
    with pytest.raises(ValueError, match="other inputs or settings.*--overwrite"):
        pack(split, tmp_path / "out", root=corpus["root"], **OPTIONS)
    right = pack(split, tmp_path / "out", root=corpus["root"], **OPTIONS, overwrite=True)
    assert right.num_samples == 4 and right.rejected == []
    assert right.settings["root"] == str(corpus["root"].resolve())


def test_clips_beside_the_class_folders_are_listed_as_rejected(corpus, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(corpus["root"] / "videos", videos)
    shutil.copy(videos / "jump/jump_0000.mp4", videos / "loose.mp4")
    manifest = pack(videos, tmp_path / "out", **OPTIONS)
    assert manifest.classes == ["jump", "wave"] and manifest.num_samples == 4
    assert manifest.rejected == [{"source": "loose.mp4", "reason": STRAY_REASON}]
    assert json.loads((tmp_path / "out/manifest.json").read_text())["totals"]["rejected"] == 1


def test_a_listing_whose_ids_skip_classes_is_packed_with_a_warning_naming_them(corpus, tmp_path, capsys):
    """No names file and 1-based ids: class 0 exists but has no clip, which would widen the model."""
    lines = corpus["train"].read_text().split()
    shifted = tmp_path / "one_based.txt"
    shifted.write_text("".join(f"{rel};{int(label) + 1}\n" for rel, label in (line.rsplit(";", 1) for line in lines)))
    manifest = pack(shifted, tmp_path / "out", root=corpus["root"], **OPTIONS)
    assert manifest.classes == ["0", "1", "2"]
    err = capsys.readouterr().err
    assert "label ids 0..2, and 1 of them (0) have no clip" in err and "--classes" in err


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_journaled_shard_that_is_gone_or_cut_is_packed_again_on_resume(corpus, tmp_path, damage):
    """Resuming trusts a journaled shard only while its file is there at the size the journal recorded:
    a shard deleted or cut after it was journaled is encoded again (and everything after it)."""
    from shards_tools.verify import verify
    out = tmp_path / "out"
    done = pack(corpus["train"], out, **{**OPTIONS, "max_samples": 1})
    original = (out / "shard-000001.tar").read_bytes()
    # killed after the third shard was journaled; the second shard was then lost or cut short
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    (out / JOURNAL_NAME).write_text("\n".join(lines[:4]) + "\n")
    (out / "manifest.json").unlink()
    if damage == "deleted":
        (out / "shard-000001.tar").unlink()
    else:
        (out / "shard-000001.tar").write_bytes(original[: len(original) // 2])
    first = _stats(out)["shard-000000.tar"][:2]
    resumed = pack(corpus["train"], out, **{**OPTIONS, "max_samples": 1})
    assert (out / "shard-000001.tar").read_bytes() == original  # encoded again, byte-identical
    assert _stats(out)["shard-000000.tar"][:2] == first  # the intact shard before it was kept as it was
    assert resumed.to_json() == done.to_json()
    assert verify(out / "manifest.json", workers=1, progress=False) == []

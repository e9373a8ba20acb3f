"""pack, as an adversarial review found it: --output inside the class-folder tree, two jobs on one folder,
a video listed twice, a finished set whose shard was damaged later, Ctrl-C, --output naming a file.
Real PyAV/synth-encoded clips."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ppma_scale.data.manifest import load_manifest
from shards_tools import journal as journal_module
from shards_tools import pack as pack_module
from shards_tools.inputs import read_inputs
from shards_tools.journal import JOURNAL_NAME, Journal
from shards_tools.pack import pack
from shards_tools.synth import render_corpus
from shards_tools.verify import verify

OPTIONS = {"workers": 1, "short_side": 32, "max_samples": 2, "progress": False}
CLI = ["--short-side", "32", "--max-samples", "2", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """2 classes x 2 clips (real H.264 files) and a split file listing them."""
    return render_corpus("synthetic", tmp_path_factory.mktemp("review"), num_classes=2, clips_per_class=2,
                         frames=20, width=64, height=48, val_fraction=0.0, workers=1)


def _videos(corpus, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(corpus["root"] / "videos", videos)
    return videos


# 1. --output inside the folder of class folders

@pytest.mark.parametrize("where", ["shards", "new/deeper/shards", "jump/shards"])
def test_an_output_inside_the_class_folders_is_never_an_input(corpus, tmp_path, where, capsys):
    videos = _videos(corpus, tmp_path)
    out = videos / where
    first = pack(videos, out, **OPTIONS)
    assert first.classes == ["jump", "wave"] and first.num_samples == 4 and first.rejected == []
    capsys.readouterr()
    again = pack(videos, out, **{**OPTIONS, "progress": True})  # the identical rerun: reused, not refused
    assert again.to_json() == first.to_json()
    assert "already packed (4 clips); nothing to do" in capsys.readouterr().err
    assert pack_module.main([str(videos), "-o", str(out), *CLI]) == 0
    repacked = pack(videos, out, **OPTIONS, overwrite=True)  # no class 'shards', no shifted label ids
    assert repacked.to_json() == first.to_json()
    assert read_inputs(videos, exclude=out)[1] == ["jump", "wave"]


def test_the_input_folder_itself_is_refused_as_output(corpus, tmp_path):
    videos = _videos(corpus, tmp_path)
    with pytest.raises(ValueError, match="is the input folder itself"):
        pack(videos, videos, **OPTIONS)
    assert not list(videos.glob("shard-*")) and not (videos / "manifest.json").exists()


# 2. two jobs on one --output

HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"pid {os.getpid()} on host testhost".encode())
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_job_on_the_same_output_is_refused_naming_the_holder(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / ".pack.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"{out} is being written by another ppma-pack job "
                                             rf"\(pid {holder.pid} on host testhost"):
            pack(corpus["train"], out, **OPTIONS)
        assert pack_module.main([str(corpus["train"]), "-o", str(out), *CLI]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ppma-pack: error: ") and f"pid {holder.pid}" in err and "--output" in err
        assert sorted(p.name for p in out.iterdir()) == [".pack.lock"]  # nothing of the set written meanwhile
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed: its lock died with it, its file stays): the next job packs, and leaves
    # no lock file behind, so the folder is the shard set only
    manifest = pack(corpus["train"], out, **OPTIONS)
    assert manifest.num_samples == 4
    assert not (out / ".pack.lock").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    assert verify(out, workers=1, progress=False) == []
    assert pack(corpus["train"], out, **OPTIONS).to_json() == manifest.to_json()


def test_the_lock_is_held_for_the_whole_job(corpus, tmp_path, monkeypatch):
    """In-process: a second OutputLock on the folder fails while a pack runs (and only then)."""
    out = tmp_path / "out"
    seen = []
    real = pack_module._encode_listed

    def probe(item, settings):
        with pytest.raises(journal_module.OutputLocked, match=f"pid {os.getpid()} on host"):
            journal_module.OutputLock(out).acquire()
        seen.append(item.index)
        return real(item, settings)

    monkeypatch.setattr(pack_module, "_encode_listed", probe)
    pack(corpus["train"], out, **OPTIONS)
    assert len(seen) == 4
    with journal_module.OutputLock(out):  # free again once the job is over
        pass


# 3. a video listed twice

def test_a_video_listed_twice_is_packed_once_and_the_repeat_rejected_with_the_first_line(corpus, tmp_path):
    lines = corpus["train"].read_text().split()
    rel, label = lines[0].rsplit(";", 1)
    other = 1 - int(label)
    split = tmp_path / "split.txt"
    split.write_text("\n".join([*lines, f"{rel};{label}", f"./{rel};{other}"]) + "\n")
    shutil.copy(corpus["classes"], tmp_path / "classes.txt")
    manifest = pack(split, tmp_path / "out", root=corpus["root"], **OPTIONS)
    assert manifest.num_samples == 4
    names = manifest.classes
    assert [r["source"] for r in manifest.rejected] == [rel, f"./{rel}"]
    same, differ = (r["reason"] for r in manifest.rejected)
    assert same.startswith(f"listed more than once: {split}:1 already lists this file") and "disagree" not in same
    assert differ.startswith(f"listed more than once: {split}:1 already lists this file")
    assert f"{label} ({names[int(label)]!r}) on line 1, {other} ({names[other]!r}) on line 6" in differ


def test_a_csv_row_repeating_a_path_is_rejected_naming_both_labels(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("path,label_name\na/x.mp4,wave\nb/y.mp4,jump\na//x.mp4,jump\nb/../b/y.mp4,jump\n")
    items, names = read_inputs(csv)
    assert names == ["jump", "wave"]
    assert [it.reason for it in items[:2]] == [None, None]
    assert items[2].reason == (f"listed more than once: {csv}:2 already lists this file (only the first listing "
                               "is used); the two listings disagree on its label: 1 ('wave') on line 2, 0 ('jump') "
                               "on line 4")
    assert items[3].reason == f"listed more than once: {csv}:3 already lists this file (only the first listing is used)"


# 4. a finished set damaged afterwards

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_finished_set_with_a_damaged_shard_is_not_reported_as_packed(corpus, tmp_path, damage, capsys):
    out = tmp_path / "out"
    done = pack(corpus["train"], out, **OPTIONS)
    shard = out / "shard-000001.tar"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    else:
        shard.unlink()
    with pytest.raises(ValueError, match=r"1 of its 2 shard\(s\) are missing or changed size.*"
                                         r"shard-000001\.tar \((missing|1000 bytes).*--overwrite"):
        pack(corpus["train"], out, **OPTIONS)
    assert pack_module.main([str(corpus["train"]), "-o", str(out), *CLI]) == 2
    assert "shard-000001.tar" in capsys.readouterr().err
    assert pack(corpus["train"], out, **OPTIONS, overwrite=True).to_json() == done.to_json()
    assert verify(out, workers=1, progress=False) == []


# 5. Ctrl-C

def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real = pack_module._encode_listed

    def interrupted_at_the_fourth(item, settings):  # the first shard (2 clips) is finished by then
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(item.index)
        return real(item, settings)

    calls: list[int] = []
    monkeypatch.setattr(pack_module, "_encode_listed", interrupted_at_the_fourth)
    try:
        code = pack_module.main([str(corpus["train"]), "-o", str(out), *CLI])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left ppma-pack's main as a KeyboardInterrupt (a traceback for the user)")
    assert code == 130
    err = capsys.readouterr().err
    assert err == "ppma-pack: interrupted; rerun the same command to resume (2 clips packed so far)\n"
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_NAME, "shard-000000.tar"]  # no temp, no lock
    assert len(Journal(out, Journal(out, "").recorded_fingerprint()).entries()) == 1
    monkeypatch.setattr(pack_module, "_encode_listed", real)
    assert pack_module.main([str(corpus["train"]), "-o", str(out), *CLI]) == 0
    clean = pack(corpus["train"], tmp_path / "clean", **OPTIONS, dataset="out")
    assert load_manifest(out).to_json() == clean.to_json()  # the resumed set is the uninterrupted one


def test_ctrl_c_while_a_shard_file_is_being_opened_leaves_no_temporary_file(corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C lands between a shard's temporary file being created and the writer holding it (the
    terminal test above caught this under load): the interrupted pack still leaves no .tmp behind."""
    out = tmp_path / "out"
    real, opened = journal_module.wds.TarWriter, []

    def interrupted_at_the_second_shard(handle, **kwargs):  # its file exists by now
        opened.append(handle.name)
        if len(opened) == 2:
            raise KeyboardInterrupt
        return real(handle, **kwargs)

    monkeypatch.setattr(journal_module.wds, "TarWriter", interrupted_at_the_second_shard)
    assert pack_module.main([str(corpus["train"]), "-o", str(out), *CLI]) == 130
    assert "ppma-pack: interrupted" in capsys.readouterr().err
    assert opened[1].endswith(".shard-000001.tar.tmp")
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_NAME, "shard-000000.tar"]  # no temp, no lock


def test_ctrl_c_in_a_terminal_with_worker_processes(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends): no traceback, from the pack
    or its workers; exit 130; the same command then finishes the set. (60 clips: with 20, a fast machine
    finished the pack between the second shard and the signal.)"""
    corpus = render_corpus("synthetic", tmp_path / "src", num_classes=2, clips_per_class=30, frames=48,
                           width=160, height=120, val_fraction=0.0, workers=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shards_tools", "pack", str(corpus["train"]), "-o", str(out), "--short-side",
           "120", "--max-samples", "2", "--workers", "2", "--quiet"]
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while len(list(out.glob("shard-*.tar"))) < 2 and time.time() < deadline and job.poll() is None:
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert not (out / "manifest.json").exists(), "the pack finished before it could be interrupted"
    assert job.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().startswith("ppma-pack: interrupted; rerun the same command to resume (") and \
        err.strip().endswith("clips packed so far)") and len(err.strip().splitlines()) == 1, err
    assert not list(out.glob(".*.tmp"))
    assert subprocess.run(cmd).returncode == 0
    assert load_manifest(out).num_samples == 60
    assert verify(out, workers=2, progress=False) == []


# 6. --output naming a file

def test_an_output_that_is_a_file_is_named(corpus, tmp_path, capsys):
    done = pack(corpus["train"], tmp_path / "out", **OPTIONS)
    manifest_file = tmp_path / "out/manifest.json"
    with pytest.raises(ValueError, match=rf"^--output must be a folder; {manifest_file} is a file$"):
        pack(corpus["train"], manifest_file, **OPTIONS)
    assert pack_module.main([str(corpus["train"]), "-o", str(manifest_file), *CLI]) == 2
    assert capsys.readouterr().err == f"ppma-pack: error: --output must be a folder; {manifest_file} is a file\n"
    with pytest.raises(ValueError, match=rf"{manifest_file} is a file \(on the way to {manifest_file}/x\)"):
        pack(corpus["train"], manifest_file / "x", **OPTIONS)
    assert load_manifest(tmp_path / "out").to_json() == done.to_json()

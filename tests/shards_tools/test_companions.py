"""verify, stats and show on the shared tiny shard sets (and damaged copies of them)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ppma_scale.data.manifest import load_manifest
from shards_tools import show as show_module
from shards_tools import stats as stats_module
from shards_tools import verify as verify_module
from shards_tools.stats import collect_stats
from shards_tools.tario import iter_samples


def test_tiny_shards_fixture_shapes(tiny_shards, tiny_shards_vp9):
    for sets, extension in ((tiny_shards, "mp4"), (tiny_shards_vp9, "webm")):
        assert set(sets) == {"synthetic", "nohuman", "downstream_train", "downstream_val"}
        for name, path in sets.items():
            manifest = load_manifest(path)
            assert len(manifest.shards) == 4 and not manifest.rejected
            assert manifest.num_samples == (8 if name == "downstream_val" else 16)
            assert manifest.classes == ["wave", "jump", "squat", "walk"]
            sample = next(iter_samples(manifest.shard_urls()[0]))
            assert extension in sample and json.loads(sample["json"])["frames"] == 24


def test_verify_passes_a_healthy_set_and_finds_damage(tiny_shards, tmp_path, capsys):
    assert verify_module.main([str(tiny_shards["synthetic"]), "--workers", "2", "--quiet"]) == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_shards["synthetic"].parent, damaged)
    manifest = load_manifest(damaged)
    first, second = (damaged / s.url for s in manifest.shards[:2])
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a clip
    first.write_bytes(bytes(data))
    second.unlink()
    capsys.readouterr()
    assert verify_module.main([str(damaged), "--workers", "2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert f"{first.name}: sha256 differs from the manifest" in out
    assert f"{second.name}: file is missing" in out
    problems = verify_module.verify(damaged, workers=1, decode=False, progress=False)
    assert sum("sha256" in str(p) for p in problems) == 1


def test_verify_catches_metadata_that_lies(tiny_shards, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(tiny_shards["nohuman"].parent, edited)
    manifest = load_manifest(edited)
    manifest.shards[0].sha256 = ""  # no checksum to fail: the sample count must catch this
    manifest.shards[0].samples += 1
    manifest.save(edited)
    problems = verify_module.verify(edited, workers=1, progress=False)
    assert any("holds 4 samples, manifest says 5" in str(p) for p in problems)


def test_stats_counts_and_plot(tiny_shards, tmp_path, capsys):
    stats = collect_stats(tiny_shards["downstream_val"])
    assert stats["samples"] == 8 and stats["class_counts"] == [2, 2, 2, 2]
    assert stats["frames"] == 8 * 24 and stats["durations"] == [2.0] * 8 and stats["codecs"] == {"h264": 8}
    assert stats["resolutions"] == {"64x48": 8}
    plot = tmp_path / "stats.png"
    assert stats_module.main([str(tiny_shards["downstream_val"]), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "8 clips in 4 shards" in text and "wave" in text
    with Image.open(plot) as image:
        assert image.size == (1000, 640)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # bars and text


def test_show_writes_a_contact_sheet(tiny_shards, tmp_path):
    manifest = load_manifest(tiny_shards["synthetic"])
    key = next(iter_samples(manifest.shard_urls()[1]))["__key__"]
    out = tmp_path / "sheet.png"
    assert show_module.main([str(tiny_shards["synthetic"]), "--key", key, "-o", str(out), "--frames", "8",
                             "--columns", "4"]) == 0
    with Image.open(out) as image:  # 2 rows x 4 tiles of 64x48 frames shown 3x (>= 160 px wide)
        assert image.size == (4 * (192 + 4) + 4, 30 + 2 * (144 + 4 + 12) + 4)
    with pytest.raises(ValueError, match="no sample with key 'nope'"):
        show_module.show(tiny_shards["synthetic"], out, key="nope")
    with pytest.raises(ValueError, match="out of range"):
        show_module.show(tiny_shards["synthetic"], out, index=99)


def test_module_entry_point_dispatches(tiny_shards):
    result = subprocess.run([sys.executable, "-m", "shards_tools", "stats", str(tiny_shards["nohuman"])],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "16 clips in 4 shards" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "shards_tools", "explode"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr

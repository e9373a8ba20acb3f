"""Command-line details: abbreviated flags are refused, `ppma-pack --help` states each default once,
and ppma-verify's summary line counts the clips that did not decode."""
from __future__ import annotations

import re
import shutil
import tarfile

import pytest

from ppma_scale.data.manifest import load_manifest
from shards_tools import pack as pack_module
from shards_tools import verify as verify_module


def test_an_abbreviated_flag_is_refused(tmp_path, capsys):
    split = tmp_path / "split.txt"
    split.write_text("a.mp4;0\n")
    with pytest.raises(SystemExit) as exited:  # was taken as --short-side 48
        pack_module.build_parser().parse_args([str(split), "-o", str(tmp_path / "out"), "--short-sid", "48"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --short-sid 48" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # a typo no longer matches a real flag by prefix
        verify_module.main([str(tmp_path), "--no-dec"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-dec" in capsys.readouterr().err


def test_pack_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        pack_module.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    options = {}  # "--flag" -> its whole entry on one line (help texts wrap after long flags)
    for block in re.split(r"\n(?=  -)", text.split("options:", 1)[1]):
        block = block.split("\n\n")[0]  # an argument group's title follows a blank line
        if not block.strip():
            continue
        options[block.split()[0].rstrip(",")] = " ".join(block.split())
    assert len(options) > 20
    assert all(entry.count("(default") <= 1 for entry in options.values()), \
        [entry for entry in options.values() if entry.count("(default") > 1]
    assert options["--root"].endswith("(default: the split file's folder)")
    assert options["--output"].endswith("folder for the shards and manifest.json")
    assert options["--crf"].endswith("(default: 23 for h264, 32 for vp9)")
    assert options["--short-side"].endswith("(default: 320)")
    assert options["--overwrite"].endswith("interrupted pack)")  # a flag: no "(default: False)"


def _zero_first_clip(shard) -> str:
    """Overwrite the payload bytes of the shard's first clip with zeros (size unchanged); its key."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith((".mp4", ".webm")))
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(bytes(member.size))
    return member.name.rsplit(".", 1)[0]


def test_verify_summary_counts_clips_that_do_not_decode(tiny_shards, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_shards["synthetic"].parent, damaged)
    shard = damaged / load_manifest(damaged).shards[1].url
    key = _zero_first_clip(shard)
    capsys.readouterr()
    assert verify_module.main([str(damaged), "--workers", "1", "--quiet"]) == 1
    out = capsys.readouterr()
    assert f"{shard.name}: sample {key}: clip does not decode" in out.out
    summary = out.err.strip().splitlines()[-1]
    assert re.fullmatch(r"FAILED: 4 shards, 16 samples, 2 problem\(s\), 1 clip\(s\) failed to decode", summary), summary
    assert "every clip decoded" not in out.err

    shutil.copy(tiny_shards["synthetic"].parent / shard.name, shard)  # healthy again
    assert verify_module.main([str(damaged), "--workers", "1", "--quiet"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == "OK: 4 shards, 16 samples, 0 problem(s), every clip decoded"


def test_verify_summary_does_not_vouch_for_clips_it_could_not_read():
    Problem = verify_module.Problem
    problems = [Problem("unreadable tar after 2 samples: ReadError: unexpected end of data", "unread", "shard-000001.tar"),
                Problem("holds 2 samples, manifest says 4", "unread", "shard-000001.tar"),
                Problem("decoded 20 frames, json says 24", "decoded otherwise", "shard-000002.tar", "k7"),
                Problem("decoded 64x40, json says 64x48", "decoded otherwise", "shard-000002.tar", "k7"),
                Problem("decoded 20 frames, json says 24", "decoded otherwise", "shard-000003.tar", "k7")]
    assert verify_module.decode_summary(problems) == (
        ", 2 clip(s) decoded to other frames/size than their json"
        ", 1 shard(s) missing or not read to the end (their clips unchecked)")
    assert str(problems[2]) == "shard-000002.tar: sample k7: decoded 20 frames, json says 24"
    assert verify_module.decode_summary([]) == ", every clip decoded"


def test_stats_reads_json_only_so_damaged_clip_bytes_pass_it(tiny_shards, tmp_path, capsys):
    """What README.md says: ppma-stats does not read the clips; checksums and decoding are ppma-verify's."""
    from shards_tools import stats as stats_module
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_shards["synthetic"].parent, damaged)
    _zero_first_clip(damaged / load_manifest(damaged).shards[0].url)
    assert stats_module.main([str(damaged)]) == 0
    assert verify_module.main([str(damaged), "--workers", "1", "--quiet", "--no-decode"]) == 1  # sha256 differs
    capsys.readouterr()

"""The stream refuses to produce a silently wrong result: shards missing at start-up, a run or an
evaluation over a remnant, a class list that does not match the samples; odd but valid JSON is a
skipped sample (named), not a crashed worker; PyAV pads past the end as DALI does."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ppma_scale.data.decode import DecodeError, EncodedClip, decode_pyav
from ppma_scale.data.evalstream import build_eval_stream
from ppma_scale.data.loader import build_train_stream
from shards_tools.videoio import decode_video

from .conftest import TINY_CLIP, take_keys


def train(manifests, **kw):
    args = dict(TINY_CLIP, micro_batch=2, num_workers=0, prefetch=2, shuffle_buffer=4, seed=1, decoder="pyav")
    args.update(kw)
    return build_train_stream(manifests, **args)


def evaluate(manifests, **kw):
    args = dict(TINY_CLIP, videos_per_batch=2, test_clips=1, test_crops=1, num_workers=0, decoder="pyav")
    args.update(kw)
    return build_eval_stream(manifests, **args)


def run_eval(stream) -> int:
    return sum(int(batch["valid"].sum()) for batch in stream)


def test_missing_or_resized_local_shards_are_an_error_at_start_up(make_shards):
    manifest = make_shards("a", [4, 4, 4, 4], record_bytes=True)
    folder = manifest.parent
    (folder / "a-0001.tar").unlink()
    data = (folder / "a-0002.tar").read_bytes()
    (folder / "a-0002.tar").write_bytes(data[: len(data) // 2])
    for build in (train, evaluate):
        with pytest.raises(FileNotFoundError, match=r"2 of the 4 shards.*missing: \S*a-0001\.tar.*"
                                                    r"size differs: \S*a-0002\.tar \(\d+ bytes, manifest says \d+\)"):
            build([manifest])
    (folder / "a-0001.tar").write_bytes((folder / "a-0000.tar").read_bytes())  # present again, right size
    with pytest.raises(ValueError, match=r"1 of the 4 shards.*size differs: \S*a-0002\.tar"):
        train([manifest])


def test_unreadable_samples_count_toward_the_failure_limit(make_shards):
    """11 of 12 shards lost after start-up: the run stops instead of training on the remnant."""
    manifest = make_shards("a", [10] * 12)
    s = train([manifest], micro_batch=4)
    tolerant = train([manifest], micro_batch=4, max_decode_failures=0.95)  # the limit is what decides
    for tar in sorted(manifest.parent.glob("*.tar"))[:11]:
        tar.unlink()
    with pytest.raises(RuntimeError, match=r"\d+ unreadable\), more than data.max_decode_failures=0.01.*a-00\d\d\.tar"):
        take_keys(s, 30)
    assert len(take_keys(tolerant, 30)) == 120


def test_an_evaluation_that_read_nothing_raises(make_shards):
    manifest = make_shards("v", [4, 4])
    stream = evaluate([manifest])
    for tar in manifest.parent.glob("*.tar"):
        tar.unlink()
    with pytest.raises(RuntimeError, match="read none of its 8 videos"):
        run_eval(stream)
    garbage = make_shards("g", [4], bad={i: "garbage" for i in range(4)})
    with pytest.raises(RuntimeError, match=r"read none of its 4 videos \(0 unreadable, 4 undecodable\)"):
        run_eval(evaluate([garbage]))
    # a rank with no videos of its own (3 videos, 4 ranks) is not an evaluation that read nothing
    small = make_shards("s", [3])
    assert [run_eval(evaluate([small], rank=r, world_size=4)) for r in range(4)] == [1, 1, 1, 0]


def test_an_evaluation_over_a_remnant_raises_at_the_training_limit(make_shards):
    manifest = make_shards("v", [50, 50], bad={10: "garbage", 60: "garbage"})  # 2% of 100 skipped
    with pytest.raises(RuntimeError, match=r"2 of 100 samples were skipped.*max_decode_failures=0.01.*v_0060"):
        run_eval(evaluate([manifest], videos_per_batch=10))
    stream = evaluate([manifest], videos_per_batch=10, max_decode_failures=0.05)
    assert run_eval(stream) == 98 and stream.stats()["decode_failures"] == 2


def test_json_null_and_null_label_are_skipped_and_named_with_their_shard(make_shards):
    manifest = make_shards("a", [6, 6], bad={1: "nulljson", 8: "nulllabel"})
    s = train([manifest], max_decode_failures=0.5)
    keys = {k for _, k in take_keys(s, 6)}
    assert not {"a_0001", "a_0008"} & keys
    failed = {f["key"]: f for f in s.stats()["failed"]}
    assert set(failed) == {"a_0001", "a_0008"}
    assert "json metadata is null, not an object" in failed["a_0001"]["reason"]
    assert failed["a_0001"]["shard"].endswith("a-0000.tar") and failed["a_0008"]["shard"].endswith("a-0001.tar")
    assert "no readable label" in failed["a_0008"]["reason"] and "None" in failed["a_0008"]["reason"]
    stream = evaluate([manifest], max_decode_failures=0.5)
    assert run_eval(stream) == 10 and stream.stats()["decode_failures"] == 2


def test_a_class_list_that_does_not_match_the_samples_stops_a_labelled_stream(make_shards):
    manifest = make_shards("a", [4, 4])
    data = json.loads(manifest.read_text())
    data["classes"] = list(reversed(data["classes"]))  # e.g. a manifest of another pack's class order
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"sample a_000\d in \S*a-000\d\.tar has label \d named '\w+'.*"
                                         r"does not match its shards"):
        take_keys(train([manifest], require_labels=True), 2)
    with pytest.raises(ValueError, match="does not match its shards"):
        run_eval(evaluate([manifest]))
    assert len(take_keys(train([manifest], require_labels=False), 2)) == 4  # labels unused: nothing to check


def test_pyav_pads_past_the_end_with_the_clips_last_frame(video_pool):
    clip = video_pool["h264"][0]
    everything = decode_video(clip)
    assert len(everything) == 24
    got = decode_pyav(clip, np.array([0, 100, 200, 300]))  # what a json that over-states its frames asks for
    np.testing.assert_array_equal(got[0], everything[0])
    for row in got[1:]:
        np.testing.assert_array_equal(row, everything[23])
    np.testing.assert_array_equal(decode_pyav(clip, np.array([20, 30]))[1], everything[23])


def test_dali_failure_reason_says_why_and_padding_matches_pyav(video_pool):
    import nvidia.dali  # noqa: F401 - installed with the package: a broken install must fail, not skip
    from ppma_scale.data.dali import DaliDecoder
    clip = video_pool["vp9"][0]
    decoder = DaliDecoder("cpu", batch_size=2)
    indices = np.array([0, 100, 200, 300])
    bad, good = decoder.decode([EncodedClip(b"\x00garbage" * 64, indices), EncodedClip(clip, indices)])
    assert isinstance(bad, DecodeError)
    reason = str(bad)
    assert "video decoder" in reason and "Critical error in pipeline" not in reason, reason
    pyav = decode_pyav(clip, indices)
    assert np.abs(good.astype(int) - pyav.astype(int)).mean(axis=(1, 2, 3)).max() < 4


def test_stage_one_names_a_broken_manifest_or_class_file_before_any_rank_starts(make_shards, tmp_path):
    from pathlib import Path
    from ppma_scale.config import load_config
    from ppma_scale.engine.tasks import build_task
    config = Path(__file__).resolve().parents[2] / "configs" / "demo" / "pretrain_test.yaml"
    good = make_shards("a", [4, 4])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [([f"data.train={broken}"], r"broken\.json is not valid JSON"),
             ([f"data.train={good}", f"data.classes={tmp_path / 'nope.txt'}"], r"nope\.txt")]
    for overrides, message in cases:
        task = build_task(load_config(config, overrides))
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            task.validate()
    build_task(load_config(config, [f"data.train={good}"])).validate()

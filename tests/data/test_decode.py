"""Decoders: PyAV seeks and stops early yet returns the exact frames; DALI cpu agrees with PyAV on VP9."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppma_scale.data.dali import DaliDecoder
from ppma_scale.data.decode import (DecodeError, EncodedClip, PyAVDecoder, choose_decoder, decode_pyav, probe)
from ppma_scale.data.loader import build_train_stream
from shards_tools.videoio import decode_video, encode_video

from .conftest import FPS, TINY_CLIP, moving_frames


@pytest.fixture(scope="module")
def h264_clip():
    return encode_video(moving_frames(40, 32, 48, 0), FPS, "h264", crf=18, gop=8)


def test_pyav_returns_exactly_the_requested_frames(h264_clip):
    everything = decode_video(h264_clip)
    assert len(everything) == 40
    for indices in ([0, 1, 2], [17, 19, 21, 23], [30, 12, 12, 39], [5]):
        got = decode_pyav(h264_clip, np.array(indices))
        np.testing.assert_array_equal(got, everything[indices])


def test_pyav_seeks_to_the_keyframe_and_stops_at_the_last_needed_frame(h264_clip):
    counts: dict = {}
    decode_pyav(h264_clip, np.array([18, 20, 22]), counts=counts)
    assert counts["decoded"] == 7  # keyframe 16 .. 22, not 0 .. 39
    decode_pyav(h264_clip, np.array([0, 2]), counts=counts)
    assert counts["decoded"] == 3


def test_pyav_clamps_past_the_end_and_names_undecodable_data(h264_clip):
    everything = decode_video(h264_clip)
    got = decode_pyav(h264_clip, np.array([38, 39, 45, 60]))
    np.testing.assert_array_equal(got[2], everything[39])
    np.testing.assert_array_equal(got[3], everything[39])
    with pytest.raises(DecodeError):
        decode_pyav(b"\x00not a video" * 50, np.array([0]))
    assert probe(h264_clip) == (40, pytest.approx(FPS))
    results = PyAVDecoder().decode([EncodedClip(b"junk", np.array([0])), EncodedClip(h264_clip, np.array([1]))])
    assert isinstance(results[0], DecodeError) and results[1].shape == (1, 32, 48, 3)


def bt601_rgb(frame) -> np.ndarray:
    """Reference YUV 4:2:0 (limited range, BT.601) -> RGB with bilinear chroma upsampling."""
    h, w = frame.height, frame.width
    planes = frame.to_ndarray(format="yuv420p").astype(np.float32)
    y = (planes[:h] - 16) * 255 / 219
    chroma = torch.from_numpy(planes[h:].reshape(2, h // 2, w // 2))[None]
    u, v = (F.interpolate(chroma, size=(h, w), mode="bilinear", align_corners=False)[0].numpy() - 128) * 255 / 224
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def test_dali_cpu_and_pyav_decode_the_same_vp9_frames():
    clip = encode_video(moving_frames(24, 48, 64, 3), FPS, "vp9", crf=20, gop=8)
    indices = np.array([3, 9, 10, 17, 23, 23])
    with av.open(io.BytesIO(clip)) as container:
        yuv = [f for f in container.decode(video=0)]
    reference = np.stack([bt601_rgb(yuv[i]) for i in indices])
    pyav = decode_pyav(clip, indices)
    dali = DaliDecoder("cpu", batch_size=2)
    garbage = EncodedClip(b"\x1aE\xdf\xa3" + b"\x00" * 300, np.array([0]))
    out = dali.decode([EncodedClip(clip, indices), garbage, EncodedClip(clip, indices[:2])])
    assert isinstance(out[1], DecodeError)  # the corrupt clip alone fails; its batch-mates decode
    assert out[0].shape == pyav.shape == (6, 48, 64, 3) and out[2].shape == (2, 48, 64, 3)
    # the same decoded YUV frames: DALI equals a BT.601 conversion of PyAV's planes up to rounding
    assert np.abs(out[0].astype(int) - reference).max() <= 1
    # PyAV's own RGB uses swscale's fast path (nearest chroma): close, not identical
    assert np.abs(out[0].astype(int) - pyav.astype(int)).mean() < 5
    assert np.abs(pyav.astype(int) - reference.astype(int)).mean() < 5
    np.testing.assert_array_equal(out[2], out[0][:2])


def test_decoder_choice():
    assert choose_decoder("pyav", ["vp9"], on_gpu=True)[0] == "pyav"
    assert choose_decoder("auto", ["h264"], on_gpu=False)[0] == "pyav"
    assert choose_decoder("auto", ["vp9", "vp9"], on_gpu=False)[0] == "pyav"  # measured faster than DALI cpu
    assert choose_decoder("auto", ["h264"], on_gpu=True)[0] == "dali_mixed"
    assert choose_decoder("auto", ["h264"], on_gpu=True, needs_cpu_frames=True)[0] == "pyav"
    assert choose_decoder("dali", ["h264"], on_gpu=True)[0] == "dali_mixed"
    assert choose_decoder("dali", ["vp9"], on_gpu=False)[0] == "dali_cpu"
    with pytest.raises(ValueError, match="VP8/VP9/MJPEG"):
        choose_decoder("dali", ["h264"], on_gpu=False)
    with pytest.raises(ValueError, match="data.decoder"):
        choose_decoder("nvdec", ["h264"], on_gpu=False)


def test_stream_decodes_vp9_shards_with_dali_cpu(make_shards):
    manifest = make_shards("v", [4, 4], codec="vp9", bad={2: "garbage"})
    args = dict(TINY_CLIP, micro_batch=2, num_workers=1, shuffle_buffer=4)
    dali = build_train_stream([manifest], decoder="dali", **args)
    pyav = build_train_stream([manifest], decoder="pyav", **args)
    assert dali.decoder == "dali_cpu" and pyav.decoder == "pyav"
    for _, a, b in zip(range(3), dali, pyav):
        assert a["key"] == b["key"]  # same stream, only the decoder differs
        assert a["video"].shape == b["video"].shape == (2, 3, 4, 16, 16)
        assert (a["video"].float() - b["video"].float()).abs().mean() < 3
    assert dali.stats()["decode_failures"] == 1 and dali.stats()["failed"][0]["key"] == "v_0002"


def test_decoding_in_the_main_process_keeps_the_stream(make_shards):
    """The path GPU decode (DALI mixed) takes, run with DALI's CPU backend: workers ship requests."""
    manifest = make_shards("v", [4, 4], codec="vp9", bad={5: "garbage"})
    args = dict(TINY_CLIP, micro_batch=2, num_workers=2, shuffle_buffer=4, decoder="dali", repeat_aug=2)
    main = build_train_stream([manifest], decode_in_main=True, **args)
    workers = build_train_stream([manifest], **args)
    for _, a, b in zip(range(3), main, workers):
        # the same samples (a refill after a failure may land in another slot of the batch)
        assert sorted(a["key"]) == sorted(b["key"]) and a["video"].shape == b["video"].shape == (4, 3, 4, 16, 16)
        assert a["video"].dtype == torch.uint8 and a["video"].float().std() > 0
    assert main.stats()["failed"][0]["key"] == "v_0005"  # caught by the workers' container probe
    with pytest.raises(ValueError, match="randaugment"):
        build_train_stream([manifest], decode_in_main=True, randaugment="rand-m7-n4", **args)


def h264_changing_size(first: np.ndarray, second: np.ndarray) -> bytes:
    """An mp4 whose H.264 stream changes frame size at a keyframe (legal: a new SPS), as a copy-mode
    remux keeps it: two raw streams back to back, muxed without re-encoding."""
    raw = b""
    for frames in (first, second):
        buf = io.BytesIO()
        with av.open(buf, "w", format="h264") as out:
            stream = out.add_stream("libx264", rate=int(FPS))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"x264-params": "keyint=4:bframes=0:scenecut=0"}
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())
        raw += buf.getvalue()
    mp4 = io.BytesIO()
    with av.open(io.BytesIO(raw), format="h264") as src, av.open(mp4, "w", format="mp4") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        packets = [p for p in src.demux(video=0) if p.size]
        for n, packet in enumerate(packets):
            packet.stream, packet.time_base, packet.pts, packet.dts, packet.duration = stream, Fraction(1, int(FPS)), n, n, 1
            dst.mux(packet)
    return mp4.getvalue()


def test_a_frame_size_change_inside_a_clip_is_a_decode_error_not_a_crash():
    data = h264_changing_size(moving_frames(12, 32, 48, 0), moving_frames(12, 48, 64, 1))
    assert decode_pyav(data, np.arange(0, 8)).shape == (8, 32, 48, 3)  # before the change: fine
    assert decode_pyav(data, np.arange(14, 20)).shape == (6, 48, 64, 3)  # after it: fine too
    with pytest.raises(DecodeError, match=r"frame size changes from 48x32 to 64x48 at frame 12"):
        decode_pyav(data, np.arange(8, 16))
    results = PyAVDecoder().decode([EncodedClip(data, np.arange(8, 16))])
    assert isinstance(results[0], DecodeError)  # counted and skipped by the stream, as any bad clip

"""transcode: constant-rate resampling, rotation, sizes, copy mode, on real encoded video."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from shards_tools.transcode import EncodeSettings, FrameRateResampler, Rejected, encode_source, output_size
from shards_tools.videoio import decode_video, encode_video


def _resample(times, fps, source_fps, max_slots=None, frame_duration=None):
    resampler = FrameRateResampler(fps, source_fps, max_slots)
    out = []
    for index, time in enumerate(times):
        out.extend(resampler.push(index, time))
    out.extend(resampler.flush(times[-1], frame_duration or 1 / source_fps))
    return out


def test_resampler_is_identity_at_the_same_rate_and_decimates_by_timestamp():
    times = [t / 30 for t in range(30)]
    assert _resample(times, 30, 30) == list(range(30))
    assert _resample(times, 10, 30) == list(range(0, 30, 3))
    assert _resample(times, 30, 30, max_slots=7) == list(range(7))
    assert _resample([t / 10 for t in range(5)], 20, 10) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_resampler_keeps_real_time_for_variable_frame_rate():
    times = [0.0, 0.1, 0.12, 0.5, 0.52]  # a stall of 0.38 s holds the frame shown at 0.12
    assert _resample(times, 10, 25, frame_duration=0.04) == [0, 1, 2, 2, 2, 3]


@pytest.mark.parametrize("size, short, upscale, expected", [
    ((640, 480), 320, False, (426, 320)), ((480, 640), 320, False, (320, 426)),
    ((67, 49), 48, False, (66, 48)), ((63, 47), 320, False, (64, 48)), ((64, 48), 96, True, (128, 96)),
])
def test_output_size_keeps_aspect_and_even_dims(size, short, upscale, expected):
    assert output_size(*size, short, upscale) == expected


def test_rotation_metadata_is_applied(messy_corpus):
    split, _, _ = messy_corpus
    data, meta = encode_source(split.parent / "odd/rotated.mp4", EncodeSettings(short_side=48))
    frames = decode_video(data)
    assert (meta["width"], meta["height"], meta["rotation"]) == (48, 64, 90)
    # the white top-left block of the stored 64x48 picture is shown bottom-left after a 90 degree CCW turn
    first = frames[0].astype(int).sum(-1)
    assert first[-8:, :6].mean() > 700 and first[:8, :6].mean() < 600


def test_frame_rate_and_duration_limits(messy_corpus):
    split, _, _ = messy_corpus
    settings = EncodeSettings(short_side=32, fps=12.5, max_duration=1.0, min_frames=8, gop=8)
    data, meta = encode_source(split.parent / "good/h264.mkv", settings)  # 30 frames at 25 fps
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (12, 12.5, 42, 32)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 12.5 and stream.codec_context.pix_fmt == "yuv420p"
        keyframes = [frame.key_frame for frame in container.decode(stream)]
    assert len(keyframes) == 12 and keyframes[0] and keyframes[8]


def test_keyframes_follow_the_gop_setting_not_the_source(tmp_path, pattern_frames):
    source = tmp_path / "every4.mp4"
    source.write_bytes(encode_video(pattern_frames(24), 12, gop=4))
    data, _ = encode_source(source, EncodeSettings(short_side=48, gop=6))
    with av.open(io.BytesIO(data)) as container:
        keyframes = [i for i, packet in enumerate(p for p in container.demux(video=0) if p.size) if packet.is_keyframe]
    assert keyframes == [0, 6, 12, 18]


@pytest.mark.parametrize("source", ["odd/gray.mkv", "odd/ten_bit.mp4", "odd/odd_size.mkv"])
def test_unusual_pixel_formats_become_8bit_420_even_sizes(messy_corpus, source):
    split, _, _ = messy_corpus
    data, meta = encode_source(split.parent / source, EncodeSettings(short_side=48, codec="vp9"))
    with av.open(io.BytesIO(data)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("vp9", "yuv420p")
    assert meta["width"] % 2 == 0 and meta["height"] == 48 and decode_video(data).shape[0] == 24


def test_copy_keeps_fitting_streams_and_reencodes_the_rest(messy_corpus):
    split, _, _ = messy_corpus
    root = split.parent
    copy = EncodeSettings(short_side=48, copy=True)
    data, meta = encode_source(root / "good/h264.mp4", copy)
    assert meta["copied"] and meta["frames"] == 24
    with av.open(str(root / "good/h264.mp4")) as original:
        packets = [bytes(p) for p in original.demux(video=0) if p.size]
    with av.open(io.BytesIO(data)) as copied:
        assert [bytes(p) for p in copied.demux(video=0) if p.size] == packets
    for source in ("odd/rotated.mp4", "odd/vfr.mkv", "good/vp9.webm", "odd/ten_bit.mp4"):
        assert not encode_source(root / source, EncodeSettings(short_side=64, copy=True))[1]["copied"], source


def test_copy_reencodes_a_stream_whose_keyframes_are_sparser_than_the_gop(tmp_path, pattern_frames):
    """A remux keeps the source's keyframes: one every 24 frames would make each clip read decode up
    to 24 frames from its seek point, where --gop 8 promised at most 8, so such a stream is re-encoded."""
    sparse, dense = tmp_path / "sparse.mp4", tmp_path / "dense.mp4"
    sparse.write_bytes(encode_video(pattern_frames(48), 12, gop=24))
    dense.write_bytes(encode_video(pattern_frames(48), 12, gop=8))
    settings = EncodeSettings(short_side=48, gop=8, copy=True)
    assert encode_source(dense, settings)[1]["copied"]
    data, meta = encode_source(sparse, settings)
    assert not meta["copied"]
    with av.open(io.BytesIO(data)) as container:
        keyframes = [i for i, packet in enumerate(p for p in container.demux(video=0) if p.size) if packet.is_keyframe]
    assert keyframes == [0, 8, 16, 24, 32, 40]


def _write_timed(path, frames, times, fps=12):
    """H.264 with frame i stamped `times[i]` seconds (ms time base), as a VFR or broken recording has."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": "bframes=0"}
        for rgb, time in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = int(round(time * 1000)), Fraction(1, 1000)
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return path


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])  # mp4 also turns the jump into a 0.04 fps average rate
def test_a_timestamp_jump_is_rejected_not_filled_with_a_frozen_frame(tmp_path, pattern_frames, suffix):
    times = [t / 12 + (600 if t >= 12 else 0) for t in range(24)]  # 2 s of video, 10 minutes apart
    source = _write_timed(tmp_path / f"jump{suffix}", pattern_frames(24), times)
    with pytest.raises(Rejected, match=r"timestamp jump: a 600.08 s gap between frames 11 and 12"):
        encode_source(source, EncodeSettings(short_side=32))


def test_stalls_and_slow_sources_are_not_timestamp_jumps(tmp_path, pattern_frames):
    stall = [t / 12 + (1.5 if t >= 12 else 0) for t in range(24)]  # a 1.5 s stall holds a frame, as before
    _, meta = encode_source(_write_timed(tmp_path / "stall.mkv", pattern_frames(24), stall),
                            EncodeSettings(short_side=32))
    assert meta["vfr"] and meta["frames"] == 24 + 18
    timelapse = [t * 2.0 + (6 if t >= 10 else 0) for t in range(20)]  # one frame per 2 s, one 8 s hole
    _, meta = encode_source(_write_timed(tmp_path / "lapse.mkv", pattern_frames(20), timelapse, fps=0.5),
                            EncodeSettings(short_side=32, fps=1))
    assert meta["frames"] == 46


def test_rejects_and_bad_settings(messy_corpus):
    split, _, _ = messy_corpus
    with pytest.raises(Rejected, match="too short: 24 frame"):
        encode_source(split.parent / "good/h264.mp4", EncodeSettings(min_frames=30))
    with pytest.raises(ValueError, match="codec 'av1' is not supported"):
        EncodeSettings(codec="av1")
    with pytest.raises(ValueError, match="fps must be positive"):
        EncodeSettings(fps=0)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_a_clip_whose_timestamps_start_late_is_not_called_truncated(tmp_path, pattern_frames, suffix):
    """Matroska declares an end time from 0 (14 s for 4 s of video starting at 10 s); MP4 a span."""
    source = _write_timed(tmp_path / f"late{suffix}", pattern_frames(48), [10 + t / 12 for t in range(48)])
    assert encode_source(source, EncodeSettings(short_side=32))[1]["frames"] == 48


def _with_audio(path, frames, fps=12):
    """Video + an audio track as long, as downloaded files come (so the container duration alone
    says nothing about the video)."""
    with av.open(str(path), "w") as output:
        video = output.add_stream("libvpx-vp9" if path.suffix == ".webm" else "libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = output.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
        samples = 0
        for t, rgb in enumerate(frames):
            output.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")))
            while samples < (t + 1) * 48000 // fps:
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, samples
                samples += 960
                output.mux(audio.encode(chunk))
        output.mux(video.encode())
        output.mux(audio.encode())
    return path


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_a_half_downloaded_video_with_audio_is_rejected_as_truncated(tmp_path, suffix):
    rng = np.random.default_rng(0)
    full = _with_audio(tmp_path / f"full{suffix}", rng.integers(0, 255, (96, 64, 96, 3), dtype=np.uint8))
    half = tmp_path / f"half{suffix}"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert encode_source(full, EncodeSettings(short_side=32))[1]["frames"] == 96
    with pytest.raises(Rejected, match=r"truncated: the decoded frames end at .* of the 8.0\d s the container"):
        encode_source(half, EncodeSettings(short_side=32, min_frames=8))


def test_copy_reencodes_an_edit_list_cut_so_the_frame_count_is_what_decodes(tmp_path, pattern_frames):
    """`ffmpeg -ss T -c copy` keeps the lead-in from the keyframe before T and hides it with an edit
    list: its packets outnumber its frames, so copying would record the wrong count."""
    full = tmp_path / "full.mp4"
    full.write_bytes(encode_video(pattern_frames(56), 12, gop=8))
    cut = tmp_path / "cut.mp4"
    with av.open(str(full)) as src, av.open(str(cut), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        tick = int(1 / (12 * src.streams.video[0].time_base))
        for i, packet in enumerate(p for p in src.demux(video=0) if p.dts is not None):
            if i >= 8:  # from keyframe 8; frame 11 becomes time 0, frames 8-10 are hidden
                packet.pts, packet.dts, packet.stream = packet.pts - 11 * tick, packet.dts - 11 * tick, stream
                dst.mux(packet)
    data, meta = encode_source(cut, EncodeSettings(short_side=48, gop=8, copy=True))
    assert not meta["copied"] and meta["frames"] == len(decode_video(data)) == 45


@pytest.mark.parametrize("copy", [False, True])
def test_an_anamorphic_source_is_packed_as_displayed(tmp_path, pattern_frames, copy):
    """Stored 96x96 with 16:9 pixels (DV/DVD style) is shown 171x96: packed with square pixels at
    that shape (and never copied, which would keep the squeezed storage)."""
    source = tmp_path / "anamorphic.mp4"
    with av.open(str(source), "w") as output:
        stream = output.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 9)
        for rgb in pattern_frames(24, 96, 96):
            output.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")))
        output.mux(stream.encode())
    data, meta = encode_source(source, EncodeSettings(short_side=96, copy=copy))
    assert (meta["width"], meta["height"], meta["copied"]) == (172, 96, False)  # 170.7, even
    assert meta["source_pixel_aspect"] == pytest.approx(16 / 9, abs=1e-3)
    assert decode_video(data).shape[1:3] == (96, 172)


def test_an_output_the_encoder_refuses_is_not_called_a_damaged_source(tmp_path, pattern_frames):
    source = tmp_path / "strip.mkv"
    source.write_bytes(encode_video(pattern_frames(24, 8, 4000), 12))
    with pytest.raises(Rejected, match=r"cannot encode h264 at 160000x320 \(from a 4000x8 source\)"):
        encode_source(source, EncodeSettings(short_side=320, upscale=True))

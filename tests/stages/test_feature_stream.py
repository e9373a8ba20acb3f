"""The linear probe's cached-feature stream: disjoint across ranks, deterministic, exactly resumable."""
import itertools

import pytest
import torch

from ppma_scale.engine.dist import DistInfo
from ppma_scale.engine.features import FeatureStream, extract_features


def placement(rank: int, world: int = 2) -> DistInfo:
    return DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), backend="gloo")


def cache(videos: int = 10, views: int = 3, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    # feature value encodes (video, view) so a batch row can be traced back to both
    video_ids = torch.arange(videos, dtype=torch.float32)[:, None, None]
    view_ids = torch.arange(views, dtype=torch.float32)[None, :, None]
    return (video_ids * 10 + view_ids).expand(videos, views, dim).clone(), torch.arange(videos) % 4


def video_of(batch: dict) -> list[int]:
    return (batch["features"][:, 0] // 10).long().tolist()


def test_an_epoch_gives_each_rank_a_disjoint_slice_with_matching_labels():
    features, labels = cache()
    streams = [FeatureStream(features, labels, placement(r), micro_batch=2, seed=5) for r in range(2)]
    assert streams[0].steps_per_epoch == 2  # 10 videos // (2 ranks x 2): the remainder waits for the next epoch
    seen = []
    for stream in streams:
        for batch in itertools.islice(iter(stream), 2):
            ids = video_of(batch)
            assert batch["label"].tolist() == [i % 4 for i in ids]
            seen.extend(ids)
    assert len(seen) == len(set(seen)) == 8


def test_epochs_reshuffle_and_a_restored_stream_continues_exactly():
    features, labels = cache()
    reference = FeatureStream(features, labels, placement(1), micro_batch=2, seed=5)
    batches = list(itertools.islice(iter(reference), 6))  # three epochs
    assert [video_of(b) for b in batches[:2]] != [video_of(b) for b in batches[2:4]]

    interrupted = FeatureStream(features, labels, placement(1), micro_batch=2, seed=5)
    it = iter(interrupted)
    for _ in range(3):
        next(it)
    state = interrupted.state_dict()
    resumed = FeatureStream(features, labels, placement(1), micro_batch=2, seed=5)
    resumed.load_state_dict(state)
    for expected, got in zip(batches[3:], itertools.islice(iter(resumed), 3)):
        assert torch.equal(expected["features"], got["features"]) and torch.equal(expected["label"], got["label"])


def test_feature_stream_input_errors():
    features, labels = cache(videos=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        FeatureStream(features, labels, placement(0), micro_batch=2, seed=0)
    stream = FeatureStream(*cache(), placement(0), micro_batch=2, seed=0)
    with pytest.raises(ValueError, match="not a feature-stream state"):
        stream.load_state_dict({"format": "ppma_scale.stream/1"})


def test_extract_features_encodes_every_row_and_keeps_the_valid_ones():
    calls = []

    def features_of(video):
        calls.append(video.shape[0])
        return video.float().mean(dim=(1, 2, 3, 4))[:, None].repeat(1, 2)

    video = torch.arange(3 * 2, dtype=torch.uint8).view(3, 2, 1, 1, 1, 1).expand(3, 2, 3, 2, 4, 4).contiguous()
    batch = {"video": video, "label": torch.tensor([1, 0, -1]), "index": torch.tensor([4, 5, -1]),
             "valid": torch.tensor([True, True, False])}
    out = extract_features(features_of, [batch], views_per_forward=4)
    assert calls == [4, 2]  # the padding row was encoded too (same work on every rank)
    assert out["features"].shape == (2, 2, 2)
    assert out["features"][1, 1, 0] == 3.0 and out["label"].tolist() == [1, 0] and out["index"].tolist() == [4, 5]

"""Multi-view aggregation and classification metrics, checked against hand-computed values."""
import json

import pytest
import torch

from ppma_scale.engine.evaluate import (
    ViewAccumulator,
    classification_metrics,
    merge_results,
    run_evaluation,
    score_eval_batches,
)


def test_views_of_a_video_are_averaged_as_probabilities():
    acc = ViewAccumulator(num_classes=3)
    # video 7: two views that disagree; video 2: one view. Views of one video may arrive in two batches.
    acc.add(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), torch.tensor([0, 2]), torch.tensor([7, 2]))
    acc.add(torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([0]), torch.tensor([7]))
    local = acc.local_results()
    assert local["index"] == [2, 7]
    assert local["views"] == [1, 2]
    expected_7 = (torch.softmax(torch.tensor([2.0, 0, 0]), 0) + torch.softmax(torch.tensor([0.0, 3, 0]), 0)) / 2
    torch.testing.assert_close(local["scores"][1], expected_7)
    assert local["label"] == [2, 0]


def test_views_of_one_video_with_two_labels_are_refused():
    acc = ViewAccumulator(num_classes=2)
    acc.add(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([4]))
    with pytest.raises(ValueError, match="video 4 has views with labels 0 and 1"):
        acc.add(torch.zeros(1, 2), torch.tensor([1]), torch.tensor([4]))


def test_metrics_match_a_hand_count():
    # 5 videos, 3 classes. Predictions (argmax): 0, 1, 1, 2, 0; labels: 0, 1, 2, 2, 1.
    scores = torch.tensor([
        [0.7, 0.2, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.2, 0.7],
        [0.5, 0.4, 0.1],
    ])
    labels = torch.tensor([0, 1, 2, 2, 1])
    m = classification_metrics(scores, labels, num_classes=3, topk=(1, 2))
    assert m["top1"] == pytest.approx(60.0)
    assert m["top2"] == pytest.approx(100.0)  # every label is in its row's best two
    # per class: class 0 1/1, class 1 1/2, class 2 1/2 -> mean 2/3
    assert m["mean_class_acc"] == pytest.approx(100 * 2 / 3, rel=1e-6)
    assert m["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert m["videos"] == 5


def test_mean_class_accuracy_ignores_classes_absent_from_the_test_set():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
    m = classification_metrics(scores, torch.tensor([0, 1]), num_classes=3, topk=(1,))
    assert m["mean_class_acc"] == pytest.approx(50.0)


def test_labels_outside_the_head_are_a_clear_error():
    with pytest.raises(ValueError, match=r"model.num_classes"):
        classification_metrics(torch.zeros(1, 3), torch.tensor([3]), num_classes=3)


def test_merge_refuses_a_video_seen_on_two_ranks():
    part = {"index": [1], "scores": torch.ones(1, 2) / 2, "label": [0], "views": [6]}
    with pytest.raises(RuntimeError, match="video 1 was evaluated on rank 0 and on rank 1"):
        merge_results([part, part], num_classes=2)


def test_merge_orders_videos_from_all_ranks():
    a = {"index": [3, 0], "scores": torch.eye(2), "label": [0, 1], "views": [6, 6]}
    b = {"index": [1], "scores": torch.tensor([[0.3, 0.7]]), "label": [1], "views": [6]}
    merged = merge_results([a, b], num_classes=2)
    assert merged["index"] == [0, 1, 3]
    assert merged["label"].tolist() == [1, 1, 0]
    torch.testing.assert_close(merged["scores"][0], torch.tensor([0.0, 1.0]))


def test_eval_batches_are_scored_per_view_and_padding_is_dropped(tmp_path):
    weights = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])

    def predict(video):  # a fixed linear "model" on the mean pixel of two channels
        assert video.dim() == 5 and video.shape[0] <= 3  # views arrive flattened, in chunks
        return video.float().mean(dim=(2, 3, 4)) @ weights

    video = torch.zeros(3, 2, 2, 2, 4, 4, dtype=torch.uint8)  # 3 rows x 2 views; row 2 is padding
    video[0, :, 0] = 200  # video 0: channel 0 bright -> class 0
    video[1, 0, 1] = 200  # video 1: one view says class 1 strongly, the other is neutral
    batches = [{"video": video, "label": torch.tensor([0, 1, -1]), "index": torch.tensor([0, 1, -1]),
                "valid": torch.tensor([True, True, False])}]
    out = tmp_path / "eval" / "results.json"
    metrics = run_evaluation(score_eval_batches(predict, batches, views_per_forward=3), num_classes=2,
                             class_names=["a", "b"], out_file=out, expected_videos=3, skipped=lambda: 1)
    assert metrics["top1"] == 100.0
    assert metrics["videos"] == 2 and metrics["skipped_videos"] == 1
    assert metrics["views_per_video"] == [2]
    on_disk = json.loads(out.read_text())
    assert on_disk["confusion"] == [[1, 0], [0, 1]]
    assert on_disk["class_names"] == ["a", "b"]
    with pytest.raises(RuntimeError, match="evaluated 2 videos and skipped 0, but the eval manifests hold 3"):
        run_evaluation(score_eval_batches(predict, batches, 3), num_classes=2, expected_videos=3)

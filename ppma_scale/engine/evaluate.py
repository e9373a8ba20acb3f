"""Multi-view evaluation: clips x crops per video, scores averaged per video, metrics over all ranks.

The eval stream yields every video exactly once over all ranks, each as clips x crops views; each
rank sums softmax scores per video index, the sums are gathered once at the end, and
rank 0 computes top-1, top-5, mean per-class accuracy and the confusion matrix from the per-video
averages. A video seen twice (on two ranks, or twice on one) is an error, not silently averaged,
because it means the stream's split is wrong.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist


@dataclass
class ViewAccumulator:
    """Per-video sums of view scores on one rank. With `views_per_video` (clips x crops), a video
    given more views than that (delivered twice on this rank) is an error naming it, not summed."""

    num_classes: int
    views_per_video: int | None = None
    score_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    view_counts: dict[int, int] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor) -> None:
        """Add one batch of views: logits `[N, C]`, labels `[N]`, video_index `[N]` (views share an index)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape [views, {self.num_classes}], got {tuple(logits.shape)}")
        if not (len(labels) == len(video_index) == logits.shape[0]):
            raise ValueError(f"logits ({logits.shape[0]}), labels ({len(labels)}) and video indices "
                             f"({len(video_index)}) must have one entry per view")
        scores = torch.softmax(logits.detach().float(), dim=-1).cpu()
        for row, (label, index) in enumerate(zip(labels.tolist(), video_index.tolist())):
            if index in self.score_sums:
                if self.labels[index] != label:
                    raise ValueError(f"video {index} has views with labels {self.labels[index]} and {label}")
                if self.views_per_video is not None and self.view_counts[index] >= self.views_per_video:
                    raise RuntimeError(f"video {index} got more than {self.views_per_video} views (clips x crops) "
                                       "on this rank: the eval stream delivered it twice")
                self.score_sums[index] += scores[row]
                self.view_counts[index] += 1
            else:
                self.score_sums[index] = scores[row].clone()
                self.view_counts[index] = 1
                self.labels[index] = label

    def local_results(self) -> dict:
        """Plain data for gathering: index -> (mean scores, label, number of views)."""
        indices = sorted(self.score_sums)
        if not indices:
            return {"index": [], "scores": torch.zeros(0, self.num_classes), "label": [], "views": []}
        return {
            "index": indices,
            "scores": torch.stack([self.score_sums[i] / self.view_counts[i] for i in indices]),
            "label": [self.labels[i] for i in indices],
            "views": [self.view_counts[i] for i in indices],
        }


def merge_results(parts: Iterable[dict], num_classes: int) -> dict:
    """Join the per-rank results; a video present on two ranks raises (the split must be disjoint)."""
    seen: dict[int, int] = {}
    indices, scores, labels, views = [], [], [], []
    for rank, part in enumerate(parts):
        for row, index in enumerate(part["index"]):
            if index in seen:
                raise RuntimeError(f"video {index} was evaluated on rank {seen[index]} and on rank {rank}: "
                                   "the eval stream must give every video to exactly one rank")
            seen[index] = rank
            indices.append(index)
            scores.append(part["scores"][row])
            labels.append(part["label"][row])
            views.append(part["views"][row])
    order = sorted(range(len(indices)), key=indices.__getitem__)
    return {
        "index": [indices[i] for i in order],
        "scores": torch.stack([scores[i] for i in order]) if scores else torch.zeros(0, num_classes),
        "label": torch.tensor([labels[i] for i in order], dtype=torch.long),
        "views": [views[i] for i in order],
    }


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           topk: tuple[int, ...] = (1, 5)) -> dict:
    """Top-k accuracy (%), mean per-class accuracy (%) over classes present, confusion matrix [true][pred]."""
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows for {labels.shape[0]} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}: "
                         "does model.num_classes match the eval manifest's label space?")
    count = labels.shape[0]
    metrics: dict = {"videos": count}
    for k in topk:
        k_eff = min(k, num_classes)
        if count == 0:
            metrics[f"top{k}"] = 0.0
            continue
        top = scores.topk(k_eff, dim=-1).indices
        metrics[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=-1).float().mean().item()
    predicted = scores.argmax(dim=-1) if count else torch.zeros(0, dtype=torch.long)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    present = per_class_total > 0
    per_class_acc = confusion.diag()[present].float() / per_class_total[present].float()
    metrics["mean_class_acc"] = 100.0 * per_class_acc.mean().item() if present.any() else 0.0
    metrics["confusion"] = confusion.tolist()
    return metrics


def gather_results(local: dict) -> list[dict]:
    """All ranks' local results (each rank gets the list; a single process gets its own)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


def score_eval_batches(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict],
                       views_per_forward: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(logits, labels, video index) per view, from eval-stream batches.

    A batch holds `video` uint8 (B, V, C, T, H, W) — V = clips x crops — with `label`, `index` and
    `valid` (B,). Every row is scored, padding included, so every rank runs the same number of
    forwards (ZeRO-3 gathers parameters inside them); padded rows are dropped afterwards.
    """
    for batch in batches:
        video = batch["video"]
        if video.dim() != 6:
            raise ValueError(f"expected eval batches of shape (B, views, C, T, H, W), got {tuple(video.shape)}")
        views = video.shape[1]
        flat = video.flatten(0, 1)
        with torch.no_grad():
            logits = torch.cat([predict(chunk) for chunk in flat.split(max(1, views_per_forward))])
        valid = torch.as_tensor(batch.get("valid", torch.ones(video.shape[0], dtype=torch.bool)))
        keep = valid.repeat_interleave(views)
        yield (logits[keep.to(logits.device)].float().cpu(),
               torch.as_tensor(batch["label"]).repeat_interleave(views)[keep],
               torch.as_tensor(batch["index"]).repeat_interleave(views)[keep])


def run_evaluation(scored_views: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_classes: int,
                   class_names: list[str] | None = None, out_file: str | Path | None = None,
                   expected_videos: int | None = None, skipped: Callable[[], int] | None = None,
                   views_per_video: int | None = None, record: dict | None = None) -> dict:
    """Merge scored views (see `score_eval_batches`) over ranks into metrics; rank 0 writes `out_file`
    (with `record`: what was evaluated, so a kept file can be told apart from another).

    Every rank must call this (the gather is a collective). `expected_videos` is the number of videos
    in the eval manifests; with `skipped()` (this rank's unreadable or undecodable videos) the
    evaluated and skipped videos must add up to it, or the split lost or repeated videos. With
    `views_per_video` (clips x crops; padded rows are already dropped) every video must have exactly
    that many views.
    """
    accumulator = ViewAccumulator(num_classes, views_per_video)
    for logits, labels, index in scored_views:
        accumulator.add(logits, labels, index)
    local = accumulator.local_results()
    local["skipped"] = int(skipped()) if skipped is not None else 0
    parts = gather_results(local)
    merged = merge_results(parts, num_classes)
    metrics = classification_metrics(merged["scores"], merged["label"], num_classes)
    metrics["skipped_videos"] = sum(part["skipped"] for part in parts)
    metrics["views_per_video"] = sorted(set(merged["views"]))
    if views_per_video is not None:  # checked on the gathered counts, so every rank raises alike
        wrong = [(i, n) for i, n in zip(merged["index"], merged["views"]) if n != views_per_video]
        if wrong:
            listed = ", ".join(f"video {i}: {n}" for i, n in wrong[:10]) + (" ..." if len(wrong) > 10 else "")
            raise RuntimeError(f"{len(wrong)} video(s) got another number of views than {views_per_video} "
                               f"(clips x crops): {listed}")
    if expected_videos is not None and metrics["videos"] + metrics["skipped_videos"] != expected_videos:
        raise RuntimeError(f"evaluated {metrics['videos']} videos and skipped {metrics['skipped_videos']}, but "
                           f"the eval manifests hold {expected_videos}")
    if class_names is not None:
        metrics["class_names"] = list(class_names)
    metrics.update(record or {})
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if out_file is not None and rank == 0:
        path = Path(out_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=1))
        tmp.replace(path)
    return metrics


def headline(metrics: dict) -> dict[str, float]:
    """The numbers worth a log line: top-1, top-5, mean per-class accuracy."""
    return {k: round(float(metrics[k]), 4) for k in ("top1", "top5", "mean_class_acc") if k in metrics}

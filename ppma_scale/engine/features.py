"""Features of a frozen trunk, computed once, served as a resumable training stream (linear probe).

A linear probe's trunk never changes, so decoding and encoding every clip again each epoch is pure
waste: `extract_features` runs the trunk once over the training videos (every video exactly once
over all ranks, clips x crops views each, like evaluation), every rank receives all of them, and
`FeatureStream` serves shuffled batches of (feature, label) — one random view per video per epoch,
each rank a disjoint slice of the same permutation, the same number of steps on every rank.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .dist import DistInfo

STATE_FORMAT = "ppma_scale.features/1"


@torch.no_grad()
def extract_features(features_of: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict],
                     views_per_forward: int) -> dict[str, torch.Tensor]:
    """This rank's features: {"features": (n, V, D) float32, "label": (n,), "index": (n,)}.

    `features_of(video_uint8)` maps (N, C, T, H, W) to (N, D). Every row of a batch is encoded (so
    every rank runs the same number of forwards); rows marked invalid (padding, unreadable videos)
    are dropped afterwards.
    """
    feats, labels, indices = [], [], []
    for batch in batches:
        video = batch["video"]
        rows, views = video.shape[:2]
        flat = video.flatten(0, 1)
        encoded = torch.cat([features_of(chunk).float().cpu() for chunk in flat.split(max(1, views_per_forward))])
        valid = torch.as_tensor(batch["valid"])
        feats.append(encoded.view(rows, views, -1)[valid])
        labels.append(torch.as_tensor(batch["label"])[valid])
        indices.append(torch.as_tensor(batch["index"])[valid])
    if not feats:
        return {"features": torch.zeros(0, 1, 0), "label": torch.zeros(0, dtype=torch.long),
                "index": torch.zeros(0, dtype=torch.long)}
    return {"features": torch.cat(feats), "label": torch.cat(labels), "index": torch.cat(indices)}


GATHER_CHUNK_BYTES = 64 << 20  # per rank and collective: what the gather adds to device memory, times the ranks


def gather_features(local: dict[str, torch.Tensor], device: torch.device | str = "cpu",
                    chunk_bytes: int = GATHER_CHUNK_BYTES) -> dict[str, torch.Tensor]:
    """Every rank's features on every rank, ordered by video index (so all ranks agree exactly).

    Gathered as tensors, a few rows at a time (`chunk_bytes` per rank per collective, on `device`:
    where the process group's collectives run), straight into host memory. Kinetics-400 at 15 views
    of 1024 floats is ~15 GB: pickled in one piece (`all_gather_object`) it was that much again per
    rank in pickles and, under NCCL, all of it on the GPU at once beside the model."""
    import torch.distributed as tdist
    parts = [local]
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        parts = _gather_rows(local, torch.device(device), chunk_bytes)
    parts = [p for p in parts if p["features"].numel()]
    if not parts:
        raise RuntimeError("no training video could be encoded for the linear probe's feature cache")
    merged = {key: torch.cat([p[key] for p in parts]) for key in ("features", "label", "index")}
    order = torch.argsort(merged["index"])
    merged = {key: value[order] for key, value in merged.items()}
    if len(torch.unique(merged["index"])) != len(merged["index"]):
        raise RuntimeError("the feature pass encoded a video twice: the eval stream's split is not disjoint")
    return merged


def _gather_rows(local: dict[str, torch.Tensor], device: torch.device, chunk_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's (features, label, index), in rank order, on every rank; rows sent in chunks."""
    import torch.distributed as tdist
    world = tdist.get_world_size()
    feats = local["features"]
    shapes = [torch.zeros(3, dtype=torch.int64, device=device) for _ in range(world)]
    tdist.all_gather(shapes, torch.tensor([feats.shape[0], *feats.shape[1:]], dtype=torch.int64, device=device))
    shapes = [tuple(s.tolist()) for s in shapes]
    encoded = {(views, dim) for rows, views, dim in shapes if rows}
    if len(encoded) > 1:
        raise RuntimeError(f"the ranks encoded features of different shapes (rows, views, dim): {shapes}")
    views, dim = encoded.pop() if encoded else (1, 0)
    if not feats.shape[0]:
        feats = torch.zeros(0, views, dim)
    meta = torch.stack([local["label"].long(), local["index"].long()], dim=1) if feats.shape[0] else \
        torch.zeros(0, 2, dtype=torch.int64)
    counts = [rows for rows, _, _ in shapes]
    out = [{"features": torch.empty(n, views, dim), "meta": torch.empty(n, 2, dtype=torch.int64)} for n in counts]
    step = max(1, chunk_bytes // max(1, views * dim * 4 + 16))
    for start in range(0, max(counts), step):
        stop = min(max(counts), start + step)
        for key, mine in (("features", feats), ("meta", meta)):
            piece = torch.zeros(stop - start, *mine.shape[1:], dtype=mine.dtype, device=device)
            rows = mine[start:stop]
            piece[:rows.shape[0]] = rows.to(device)
            gathered = [torch.empty_like(piece) for _ in range(world)]
            tdist.all_gather(gathered, piece)
            for rank, got in enumerate(gathered):
                if start < counts[rank]:
                    out[rank][key][start:min(stop, counts[rank])] = got[:min(stop, counts[rank]) - start].cpu()
    return [{"features": o["features"], "label": o["meta"][:, 0], "index": o["meta"][:, 1]} for o in out]


class FeatureStream:
    """Batches {"features": (B, D), "label": (B,)} drawn from cached features; resumable.

    Epoch e shuffles the videos with a generator seeded by (seed, e), identical on every rank, and
    picks one view per video; rank r takes batch slots r, r + W, ... of each global batch.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, dist: DistInfo, micro_batch: int,
                 seed: int) -> None:
        if features.dim() != 3:
            raise ValueError(f"features must be (videos, views, dim), got {tuple(features.shape)}")
        self.features, self.labels = features, labels.long()
        self.rank, self.world = dist.rank, dist.world_size
        self.micro_batch, self.seed = micro_batch, seed
        videos = features.shape[0]
        self.steps_per_epoch = videos // (self.world * micro_batch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the linear probe has features of {videos} videos, fewer than one global batch "
                             f"({self.world} ranks x train.micro_batch {micro_batch}); lower train.micro_batch")
        self.epoch, self.step_in_epoch, self.served = 0, 0, 0

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, 7]).generate_state(1)[0]))
        order = torch.randperm(self.features.shape[0], generator=gen)
        views = torch.randint(0, self.features.shape[1], (self.features.shape[0],), generator=gen)
        return order, views

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order, views = self._plan(self.epoch)
        while True:
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                order, views = self._plan(self.epoch)
            start = self.step_in_epoch * self.world * self.micro_batch + self.rank * self.micro_batch
            rows = order[start:start + self.micro_batch]
            self.step_in_epoch += 1
            self.served += len(rows)
            yield {"features": self.features[rows, views[rows]], "label": self.labels[rows]}

    def state_dict(self) -> dict[str, Any]:
        """Position as of the last batch yielded: epoch and global samples consumed in it."""
        return {"format": STATE_FORMAT, "epoch": self.epoch,
                "consumed": self.step_in_epoch * self.world * self.micro_batch}

    def resumes_alone(self, state: dict[str, Any]) -> bool:
        """The position is global (the same on every rank), so any rank's state resumes any layout."""
        return True

    def continued_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Any saved rank's state: the position is global."""
        return states[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(state, (list, tuple)):
            state = state[0]
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"the checkpoint's data state is not a feature-stream state ({state.get('format')!r}): "
                             "was it saved by a run of another task?")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["consumed"]) // (self.world * self.micro_batch)

    def stats(self) -> dict[str, Any]:
        return {"samples": self.served, "cached_videos": int(self.features.shape[0]),
                "views_per_video": int(self.features.shape[1])}

"""Decoding in the training process (GPU decode with DALI mixed), overlapped with training.

Forked DataLoader workers cannot use CUDA, so for NVDEC the workers only read samples and choose
frames; this module decodes each batch here, renders the views on the same device, and does so in
a background thread a couple of batches ahead, so NVDEC works while the model trains. Which batch
counts as consumed is still decided where the batch is handed to training (loader.py).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import numpy as np
import torch

from ppma_scale.data.decode import EncodedClip, make_decoder
from ppma_scale.data.transforms import TrainAugment, render_views, train_views


class MainProcessDecoder:
    """Turns a worker's batches of encoded requests into views on `device` (in place), in order.

    A clip that does not decode is dropped and counted as a decode failure in its batch's stats, so
    `data.max_decode_failures` judges it like a failure in a worker. Its row (the batch's size is
    fixed: every rank runs the same steps) is filled by a clip that did decode, which brings its own
    label, key and dataset into all `repeat` slots of the row: a batch-mate, or, when no clip of the
    batch decoded (always the case for micro_batch 1), a clip of the next batch that has one. Such a
    batch is held back until then and still yielded as its own step, before that next batch; the
    loader accounts it as consumed like any other (cursor, stats), so a resume from a later
    checkpoint does not revisit it. Dropping it instead would put this rank's stream a step ahead of
    the other ranks', whose states would then no longer describe one step.
    """

    ROW_FIELDS = ("label", "key", "dataset")  # per-view fields: `repeat` consecutive slots per clip
    MAX_HELD = 64  # batches in a row with no decodable clip: the data is broken, not a bad clip

    def __init__(self, kind: str, batch: int, device: str, augment: TrainAugment):
        self.kind, self.batch, self.augment = kind, batch, augment
        self.device = torch.device(device)
        self._decoder = None

    def batches(self, items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Each batch of `items` with its views; run it in the thread that decodes (see `run_ahead`)."""
        held: list[tuple[dict[str, Any], list]] = []  # batches with no decodable clip, waiting for a donor
        for batch in items:
            decoded = self._decode(batch)
            if all(isinstance(f, Exception) for f in decoded):
                held.append((batch, decoded))
                if len(held) > self.MAX_HELD:
                    raise RuntimeError(f"no clip of {len(held)} batches in a row decoded "
                                       f"({self.kind}); last error: {decoded[0]}")
                continue
            for waiting, failures in held:
                yield self._render(waiting, failures, batch, decoded)
            held.clear()
            yield self._render(batch, decoded, batch, decoded)
        if held:
            raise RuntimeError(f"the stream ended with {len(held)} batches in which no clip decoded")

    def _decode(self, batch: dict[str, Any]) -> list:
        if self._decoder is None:  # built in the thread that uses it
            device_id = (self.device.index or 0) if self.device.type == "cuda" else None
            self._decoder = make_decoder(self.kind, self.batch, device_id=device_id, threads=2)
        encoded = batch.pop("__encoded__")
        return self._decoder.decode([EncodedClip(data, idx) for data, idx in encoded])

    def _render(self, batch: dict[str, Any], decoded: list, donor: dict[str, Any], donated: list) -> dict[str, Any]:
        """Views of `batch`; a failed clip's row takes a decoded clip of `donor` (maybe `batch`) with its fields."""
        rng = np.random.default_rng(batch.pop("__view_seed__"))
        r = self.augment.repeat
        good = [j for j, f in enumerate(donated) if not isinstance(f, Exception)]
        failed, views = [], []
        for i, frames in enumerate(decoded):
            if isinstance(frames, Exception):  # the slot is already handed out: a decoded clip stands in
                j = good[i % len(good)]
                row, src = slice(i * r, (i + 1) * r), slice(j * r, (j + 1) * r)
                failed.append({"key": batch["key"][row.start], "dataset": batch["dataset"][row.start],
                               "reason": f"{frames} (replaced by {donor['key'][src.start]})"})
                for name in self.ROW_FIELDS:  # copies (tensor rows, list items): no aliasing
                    batch[name][row] = donor[name][src]
                frames = donated[j]
            boxes = train_views(frames.shape[1], frames.shape[2], self.augment, rng)
            views.append(render_views(frames, boxes, self.augment.img_size))
        batch["video"] = torch.cat(views)
        if failed:
            stats = batch["__stats__"]
            stats["samples"] = stats.get("samples", 0) - len(failed)  # counted as failures instead
            stats["decode_failures"] = stats.get("decode_failures", 0) + len(failed)
            stats["failed"] = stats.get("failed", []) + failed
        return batch


def run_ahead(results: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`results`, computed in a background thread up to `depth` ahead; errors re-raised here.

    Once this generator is closed, the thread puts nothing more (no put waits on a full queue for
    good) and ends after the result it is computing."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for done in results:
                if not put(("item", done)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
            put(("error", exc))

    thread = threading.Thread(target=produce, name="ppma-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()

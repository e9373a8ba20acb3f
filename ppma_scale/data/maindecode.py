"""Decoding in the training process (GPU decode with DALI mixed), overlapped with training.

Forked DataLoader workers cannot use CUDA, so for NVDEC the workers only read samples and choose
frames; this module decodes each batch here, renders the views on the same device, and does so in
a background thread a couple of batches ahead, so NVDEC works while the model trains. Which batch
counts as consumed is still decided where the batch is handed to training (loader.py).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ppma_scale.data.decode import EncodedClip, make_decoder
from ppma_scale.data.transforms import TrainAugment, render_views, train_views


class MainProcessDecoder:
    """Turns a worker's batch of encoded requests into views on `device` (in place)."""

    def __init__(self, kind: str, batch: int, device: str, augment: TrainAugment):
        self.kind, self.batch, self.augment = kind, batch, augment
        self.device = torch.device(device)
        self._decoder = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self._decoder is None:  # built in the thread that uses it
            device_id = (self.device.index or 0) if self.device.type == "cuda" else None
            self._decoder = make_decoder(self.kind, self.batch, device_id=device_id, threads=2)
        encoded = batch.pop("__encoded__")
        rng = np.random.default_rng(batch.pop("__view_seed__"))
        decoded = self._decoder.decode([EncodedClip(data, idx) for data, idx in encoded])
        good = [i for i, f in enumerate(decoded) if not isinstance(f, Exception)]
        if not good:
            raise RuntimeError(f"decoding failed for every clip of a batch: {decoded[0]}")
        failed, views = [], []
        for i, frames in enumerate(decoded):
            if isinstance(frames, Exception):  # the slot is already handed out: a batch-mate stands in
                failed.append({"key": batch["key"][i * self.augment.repeat],
                               "reason": f"{frames} (replaced by another clip of its batch)"})
                frames = decoded[good[i % len(good)]]
            boxes = train_views(frames.shape[1], frames.shape[2], self.augment, rng)
            views.append(render_views(frames, boxes, self.augment.img_size))
        batch["video"] = torch.cat(views)
        if failed:
            stats = batch["__stats__"]
            stats["decode_failures"] = stats.get("decode_failures", 0) + len(failed)
            stats["failed"] = stats.get("failed", []) + failed
        return batch


def run_ahead(items: Iterator[Any], work: Callable[[Any], Any], depth: int = 2) -> Iterator[Any]:
    """`work(item)` for each item in a background thread, up to `depth` results ahead; errors re-raised."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                done = work(item)
                while not stop.is_set():
                    try:
                        results.put(("item", done), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
            results.put(("error", exc))

    thread = threading.Thread(target=produce, name="ppma-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()

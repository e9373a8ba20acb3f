"""Config -> data-layer arguments (engine/data_args.py, and the evaluation views of engine/classify.py):
every data.* / augment.* / train.* key the stream builders take reaches the argument it names.

Each key is set to a value that differs from the builder's default (and, where types allow, from every
other key's value), so a key that is dropped, swapped with another or replaced by a constant shows."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ppma_scale.config import load_config
from ppma_scale.data import loader
from ppma_scale.engine.classify import views_stream
from ppma_scale.engine.data_args import train_stream_args
from ppma_scale.engine.dist import DistInfo

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "align_test.yaml"
DIST = DistInfo(rank=1, world_size=3, local_rank=1, device=torch.device("cuda", 1), backend="nccl")
OVERRIDES = [
    "model.init=/runs/stage1",
    "data.train=[{manifest: /shards/a/manifest.json, weight: 2.5, name: first}, /shards/b/manifest.json]",
    "data.val=[/shards/v/manifest.json]",
    "run.seed=77", "train.micro_batch=6", "train.steps_per_epoch=41",
    "data.num_frames=12", "data.sampling=stride", "data.stride=3", "data.window_s=1.7", "data.img_size=48",
    "data.short_side=57", "data.repeat_aug=3", "data.decoder=pyav", "data.num_workers=5", "data.prefetch=7",
    "data.shuffle_buffer=33", "data.mix=batch", "data.classes=/shards/classes.txt", "data.allow_pipe=true",
    "data.max_decode_failures=0.07", "data.test_clips=4", "data.test_crops=5",
    "augment.crop=multi_scale", "augment.scale=[0.3, 0.9]", "augment.ratio=[0.6, 1.7]", "augment.flip=false",
    "augment.randaugment=rand-m5-n2-mstd0.5", "augment.mean=[0.1, 0.2, 0.3]",
]
EXPECTED_TRAIN = dict(
    rank=1, world_size=3, micro_batch=6, seed=77, num_frames=12, sampling="stride", stride=3, window_s=1.7,
    img_size=48, short_side=57, repeat_aug=3, crop="multi_scale", scale=[0.3, 0.9], ratio=[0.6, 1.7], flip=False,
    randaugment="rand-m5-n2-mstd0.5", mean=[0.1, 0.2, 0.3], decoder="pyav", device="cuda:1", num_workers=5,
    prefetch=7, shuffle_buffer=33, mix="batch", steps_per_epoch=41, classes="/shards/classes.txt",
    require_labels=True, allow_pipe=True, max_decode_failures=0.07,
)


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_train_stream_args_forward_every_key_to_its_argument():
    cfg = load_config(CONFIG, OVERRIDES)
    args = train_stream_args(cfg, DIST, require_labels=True)
    defaults = _defaults(loader.build_train_stream)
    assert set(args) <= set(inspect.signature(loader.build_train_stream).parameters)  # all real arguments
    assert set(args) == set(EXPECTED_TRAIN) | {"datasets"}
    for name, value in EXPECTED_TRAIN.items():
        got = list(args[name]) if isinstance(args[name], tuple) else args[name]
        assert got == value, (name, args[name])
        if name in defaults:
            default = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
            assert got != default, name  # a key left at its default could not show it is forwarded
    datasets = args["datasets"]
    assert [(d.manifest, d.weight, d.name) for d in datasets] == [
        ("/shards/a/manifest.json", 2.5, "first"), ("/shards/b/manifest.json", 1.0, None)]
    assert train_stream_args(cfg, DIST, require_labels=False)["require_labels"] is False


def test_evaluation_views_forward_every_key_to_its_argument(monkeypatch):
    cfg = load_config(CONFIG, OVERRIDES)
    seen = {}

    def capture(datasets, **kw):  # records the call; the real builder is exercised by tests/data
        seen.update(kw, datasets=datasets)
        return "stream"

    monkeypatch.setattr(loader, "build_eval_stream", capture)
    assert views_stream(cfg, DIST, cfg.data.val, ["x", "y"]) == "stream"
    monkeypatch.undo()
    parameters = inspect.signature(loader.build_eval_stream).parameters
    assert set(seen) <= set(parameters)
    expected = dict(rank=1, world_size=3, videos_per_batch=3, num_frames=12, sampling="stride", stride=3,
                    window_s=1.7, img_size=48, short_side=57, test_clips=4, test_crops=5, decoder="pyav",
                    device="cuda:1", num_workers=5, prefetch=7, classes=["x", "y"], require_labels=True,
                    allow_pipe=True, max_decode_failures=0.07)
    assert set(seen) == set(expected) | {"datasets"}
    defaults = _defaults(loader.build_eval_stream)
    for name, value in expected.items():
        assert seen[name] == value, (name, seen[name])
        if name in defaults and name != "require_labels":
            assert value != defaults[name], name
    assert [d.manifest for d in seen["datasets"]] == ["/shards/v/manifest.json"]

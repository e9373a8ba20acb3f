"""The classification tasks on the real VideoViT: blended trunks, frozen probes, losses, config errors."""
import pytest
import torch

from ppma_scale.cli import launch
from ppma_scale.config import build_config
from ppma_scale.engine.averaging import AveragedTrunk
from ppma_scale.engine.classify import classification_loss
from ppma_scale.models import VideoClassifier, build_encoder

TINY = {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_cfg(**model):
    return build_config({"run": {"task": "linprobe"}, "model": {**TINY, **model},
                         "data": {"num_frames": 4, "img_size": 32}})


def encoder(cfg, seed: int):
    torch.manual_seed(seed)
    return build_encoder(cfg.model, cfg.data.num_frames, cfg.data.img_size, final_norm=False)


def test_a_blended_videovit_under_a_probe_head_trains_only_alpha_and_the_head():
    cfg = tiny_cfg()
    sources = [encoder(cfg, s).state_dict() for s in (1, 2)]
    trunk = AveragedTrunk(encoder(cfg, 0), sources, mode="per_tensor")
    model = VideoClassifier(trunk, num_classes=3, head="probe", freeze_encoder=False)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["encoder.alpha", "head.fc.bias", "head.fc.weight"]

    uniform = encoder(cfg, 0)
    uniform.load_state_dict({k: (sources[0][k] + sources[1][k]) / 2 for k in sources[0]})
    video = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(trunk(video), uniform(video), rtol=1e-4, atol=1e-5)

    loss = classification_loss(model(video), torch.tensor([0, 2]))
    loss.backward()
    assert model.encoder.alpha.grad.abs().sum() > 0  # the gradient reaches every tensor's mixing logits
    assert model.encoder.alpha.grad.shape == (len(trunk.param_names), 2)


def test_soft_and_hard_targets_give_the_same_loss_for_one_hot_targets():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 4, 1])
    soft = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(classification_loss(logits, soft), classification_loss(logits, labels))


def launch_errors(capsys, tmp_path, config: str, *overrides: str) -> str:
    code = launch(["--config", f"configs/demo/{config}", "--output", str(tmp_path / "run"), *overrides],
                  stage="linprobe", tasks=("linprobe", "classify"))
    assert code == 2
    assert not (tmp_path / "run").exists()
    return capsys.readouterr().err


def test_user_errors_stop_the_run_before_any_work(capsys, tmp_path, tiny_shards, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])
    data = [f"data.train={tiny_shards['downstream_train']}", f"data.val={tiny_shards['downstream_val']}"]
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", *data, "augment.mixup=0.8")
    assert "caches one pass of features" in err and "augment.mixup=0" in err
    # random crops, flips, repeated views and weights would be ignored: the cache holds the test-time views
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", *data, "augment.flip=true", "data.repeat_aug=2",
                        "augment.crop=random_resized")
    assert "augment.crop=random_resized, augment.flip=true, data.repeat_aug=2: the linear probe caches the " \
           "features of every training video once, at the test-time views" in err
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", *data, f"model.init={tmp_path / 'nope'}")
    assert "model.init" in err and "does not exist" in err
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", *data, "model.num_classes=101")
    assert "model.num_classes is 101 but the training data's label space has 4 classes" in err
    err = launch_errors(capsys, tmp_path, "align_test.yaml", *data, "model.init=null", "model.average=[a]")
    assert "at least 2 trunks" in err
    err = launch_errors(capsys, tmp_path, "align_test.yaml", *data, "model.init=null", "train.micro_batch=3",
                        "augment.mixup=0.8")
    assert "must be even" in err
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", *data, "train.micro_batch=1")
    assert "train.micro_batch=1: the linear probe's head normalises with BatchNorm" in err


def test_val_classes_outside_the_training_label_space_stop_the_run_before_training(capsys, tmp_path, tiny_shards,
                                                                                   monkeypatch):
    """Caught in validate, not after training at the first evaluation."""
    import json
    import shutil
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])
    val = tmp_path / "val"
    shutil.copytree(tiny_shards["downstream_val"].parent, val)
    manifest = json.loads((val / "manifest.json").read_text())
    manifest["classes"] = ["clap" if name == "wave" else name for name in manifest["classes"]]
    (val / "manifest.json").write_text(json.dumps(manifest))
    err = launch_errors(capsys, tmp_path, "linprobe_test.yaml", f"data.train={tiny_shards['downstream_train']}",
                        f"data.val={val / 'manifest.json'}", "model.init=null")
    assert "data.val[0]" in err and "clap" in err and "label space" in err


@pytest.mark.parametrize("task, val, owed", [("classify", [], False), ("classify", ["val/manifest.json"], True),
                                              ("linprobe", [], False), ("linprobe", ["val/manifest.json"], True),
                                              ("mae", ["val/manifest.json"], False)])
def test_only_a_task_with_something_to_evaluate_is_owed_an_evaluation_on_resume(task, val, owed):
    """The trainer evaluates a resumed step whose due evaluation is not recorded; a classification run
    without data.val records none, and must not log `eval_pending` at every resume for it."""
    from ppma_scale.engine.tasks import build_task
    cfg = build_config({"run": {"task": task}, "model": TINY, "data": {"num_frames": 4, "img_size": 32, "val": val}})
    assert build_task(cfg).evaluates() is owed

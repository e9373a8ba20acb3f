"""Weight averaging: uniform averages equal hand-computed ones; adaptive averaging learns alpha only."""
import pytest
import torch
from torch import nn

from ppma_scale.engine.averaging import AveragedTrunk, average_state_dicts, describe_weights


class SmallTrunk(nn.Module):
    """A stand-in trunk with a parameter-free buffer, a norm and a method other than forward."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.register_buffer("offset", torch.arange(6.0))
        self.embed_dim = 6

    def forward_features(self, x):
        return self.norm(self.proj(x)) + self.offset

    def forward(self, x):
        return self.forward_features(x).mean(dim=-1)


def trunk_states(count: int) -> list[dict]:
    states = []
    for seed in range(count):
        torch.manual_seed(seed)
        states.append(SmallTrunk().state_dict())
    return states


def test_uniform_average_equals_hand_computed_mean():
    a, b = trunk_states(2)
    avg = average_state_dicts([a, b])
    for key in a:
        torch.testing.assert_close(avg[key], (a[key] + b[key]) / 2)


def test_weighted_average_and_its_input_checks():
    a, b, c = trunk_states(3)
    avg = average_state_dicts([a, b, c], weights=[0.5, 0.25, 0.25])
    torch.testing.assert_close(avg["proj.weight"], 0.5 * a["proj.weight"] + 0.25 * (b["proj.weight"] + c["proj.weight"]))
    with pytest.raises(ValueError, match="sum to 1"):
        average_state_dicts([a, b], weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="at least 2"):
        average_state_dicts([a])
    b_bad = dict(b, **{"proj.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"'proj.weight' has shape \(3, 3\)"):
        average_state_dicts([a, b_bad])
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([a, {k: v for k, v in b.items() if k != "norm.bias"}])


def test_integer_tensors_must_agree():
    a = {"w": torch.ones(2), "count": torch.tensor(3)}
    b = {"w": torch.zeros(2), "count": torch.tensor(4)}
    with pytest.raises(ValueError, match="non-float tensor 'count' differs"):
        average_state_dicts([a, b])


@pytest.mark.parametrize("mode", ["per_model", "per_tensor"])
def test_adaptive_average_starts_uniform_and_learns_only_alpha(mode):
    states = trunk_states(2)
    trunk = AveragedTrunk(SmallTrunk(), states, mode=mode)
    assert [name for name, _ in trunk.named_parameters()] == ["alpha"]
    assert trunk.alpha.shape == ((2,) if mode == "per_model" else (len(trunk.param_names), 2))
    assert trunk.embed_dim == 6  # plain attributes of the trunk read through

    reference = SmallTrunk()
    reference.load_state_dict(average_state_dicts(states))
    x = torch.randn(5, 4)
    torch.testing.assert_close(trunk(x), reference(x))
    torch.testing.assert_close(trunk.forward_features(x), reference.forward_features(x))

    sources_before = [t.clone() for t in trunk.buffers()]
    head = nn.Linear(6, 3)
    optimizer = torch.optim.SGD([trunk.alpha, *head.parameters()], lr=0.5)
    target = torch.randint(0, 3, (5,))
    loss = nn.functional.cross_entropy(head(trunk.forward_features(x)), target)
    loss.backward()
    assert trunk.alpha.grad is not None and trunk.alpha.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(trunk.alpha.detach(), torch.zeros_like(trunk.alpha))
    for before, after in zip(sources_before, trunk.buffers()):
        assert torch.equal(before, after)  # the source trunks stay frozen


def test_a_dominant_alpha_selects_one_source_and_materialize_exports_the_blend():
    states = trunk_states(2)
    trunk = AveragedTrunk(SmallTrunk(), states)
    with torch.no_grad():
        trunk.alpha.copy_(torch.tensor([0.0, 40.0]))
    blended = trunk.blended_state_dict()
    torch.testing.assert_close(blended["proj.weight"], states[1]["proj.weight"])
    plain = trunk.materialize()
    assert isinstance(plain, SmallTrunk)
    x = torch.randn(3, 4)
    torch.testing.assert_close(plain(x), trunk(x))
    weights = describe_weights(trunk, ["mae", "align"])
    assert weights["align"] > 0.99


def test_adaptive_average_input_errors():
    a, b = trunk_states(2)
    with pytest.raises(ValueError, match="at least 2 trunks"):
        AveragedTrunk(SmallTrunk(), [a])
    with pytest.raises(ValueError, match="runs/b lacks trunk parameters"):
        AveragedTrunk(SmallTrunk(), [a, {"proj.weight": b["proj.weight"]}], source_names=["runs/a", "runs/b"])
    with pytest.raises(ValueError, match="average_mode"):
        AveragedTrunk(SmallTrunk(), [a, b], mode="per_layer")


@pytest.mark.parametrize("weights, message", [
    ([float("nan"), float("nan")], "finite"),
    ([float("inf"), 0.0], "finite"),
    ([0.5, float("nan")], "finite"),
    ([0.0, 0.0], "sum to 1"),
    ([-1.0, 2.0], "non-negative"),
    ([1.0], "one weight per input"),
])
def test_non_finite_and_other_bad_weights_are_refused(weights, message):
    a, b = trunk_states(2)
    with pytest.raises(ValueError, match=message):
        average_state_dicts([a, b], weights=weights)


def soup_inputs(tmp_path):
    from safetensors.torch import save_file
    paths = []
    for name, state in zip("ab", trunk_states(2)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(state, paths[-1])
    return paths


def test_average_cli_refuses_nan_weights_and_writes_nothing(tmp_path, capsys):
    from ppma_scale.average import main
    a, b = soup_inputs(tmp_path)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), "--out", str(out), "--weights", "nan", "nan"]) == 2
    assert "--weights: weights must be finite numbers" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("out_name", ["a.safetensors", "link.safetensors", "./sub/../a.safetensors"])
def test_average_cli_refuses_to_overwrite_an_input(tmp_path, capsys, out_name):
    from ppma_scale.average import main
    a, b = soup_inputs(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.safetensors").symlink_to(a)
    before = a.read_bytes()
    assert main([str(a), str(b), "--out", str(tmp_path / out_name)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert a.read_bytes() == before


def test_average_cli_writes_the_soup_atomically_and_names_a_bad_input(tmp_path, capsys):
    from safetensors.torch import load_file

    from ppma_scale.average import main
    a, b = soup_inputs(tmp_path)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    mean = (load_file(a)["proj.weight"] + load_file(b)["proj.weight"]) / 2
    torch.testing.assert_close(load_file(out)["proj.weight"], mean)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "soup.safetensors"]
    b.write_text("hello\n")  # not a safetensors file at all
    assert main([str(a), str(b), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{b} is not a readable safetensors file" in err and "Traceback" not in err


def test_average_cli_keeps_an_existing_soup_unless_told_to_replace_it(tmp_path, capsys):
    from safetensors.torch import load_file

    from ppma_scale.average import main
    a, b = soup_inputs(tmp_path)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), "--out", str(out), "--weights", "1", "0"]) == 0
    before = out.read_bytes()
    assert main([str(a), str(b), "--out", str(out)]) == 2
    assert f"{out} already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main([str(a), str(b), "--out", str(out), "--overwrite"]) == 0
    mean = (load_file(a)["proj.weight"] + load_file(b)["proj.weight"]) / 2
    torch.testing.assert_close(load_file(out)["proj.weight"], mean)


def test_average_cli_refuses_one_model_given_twice(tmp_path, capsys):
    """A model under two names (a copy, or a run and its own checkpoint) averages to itself."""
    import shutil
    from ppma_scale.average import main
    a, b = soup_inputs(tmp_path)
    copy = tmp_path / "copy_of_a.safetensors"
    shutil.copy(a, copy)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), str(copy), "--out", str(out)]) == 2
    assert f"{a} and {copy} hold the same weights" in capsys.readouterr().err
    assert not out.exists()


def demo_blend_config(*sources):
    from pathlib import Path
    from ppma_scale.config import load_config
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo"
    listed = "[" + ", ".join(str(s) for s in sources) + "]"
    return load_config(demo / "finetune_test.yaml", ["model.init=null", f"model.average={listed}", "data.train=unused", "data.val=unused"])


def test_adaptive_averaging_refuses_the_same_trunk_twice(tmp_path):
    """Blending a trunk with itself would train alpha on noise and report it as a learned mix."""
    import shutil
    import torch
    from safetensors.torch import save_file
    from ppma_scale.engine.dist import DistInfo
    from ppma_scale.engine.tasks import build_task
    from ppma_scale.models import build_encoder
    cfg = demo_blend_config("x", "y")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        trunk = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.img_size)
        paths.append(tmp_path / f"trunk{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, paths[-1])
    with pytest.raises(ValueError, match=r"model.average\[0\] and model.average\[2\] are the same trunk"):
        build_task(demo_blend_config(paths[0], paths[1], tmp_path / "sub" / ".." / paths[0].name)).validate()
    shutil.copy(paths[0], tmp_path / "copy.safetensors")
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    task = build_task(demo_blend_config(paths[0], tmp_path / "copy.safetensors"))
    task.classes = ["a", "b"]  # the label space would come from data.train
    with pytest.raises(ValueError, match=r"model.average\[0\] .* and model.average\[1\] .* hold the same weights"):
        task.build_model(cpu)
    task = build_task(demo_blend_config(paths[0], paths[1]))
    task.classes = ["a", "b"]
    assert task.build_model(cpu) is not None  # two different trunks blend


def test_a_resumed_blend_refuses_sources_that_hold_other_weights_than_it_started_from(tmp_path):
    """A blend's sources are not in its checkpoints: a resume or an evaluation reads them again. A
    run folder named there moves on when that run trains on, so the blend would continue (or be
    scored) over other trunks than the ones alpha and the head were trained with."""
    import torch
    from safetensors.torch import save_file
    from ppma_scale.config import ConfigError
    from ppma_scale.engine.dist import DistInfo
    from ppma_scale.engine.tasks import build_task
    from ppma_scale.models import build_encoder
    cfg = demo_blend_config("x", "y")
    paths = [tmp_path / f"trunk{seed}.safetensors" for seed in (0, 1)]

    def write(path, seed):
        torch.manual_seed(seed)
        trunk = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.img_size)
        save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, path)

    write(paths[0], 0)
    write(paths[1], 1)
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    task = build_task(demo_blend_config(*paths))
    task.classes = ["a", "b"]
    task.build_model(cpu)
    record = task.checkpoint_record()
    assert [s["path"] for s in record["average_sources"]] == [str(p) for p in paths]

    def resumed():
        task = build_task(demo_blend_config(*paths))
        task.classes = ["a", "b"]
        task.resume_from = tmp_path / "run" / "step_4"
        task.check_checkpoint_record(record, task.resume_from)
        return task.build_model(cpu)

    assert resumed() is not None  # the same sources: the blend goes on
    write(paths[1], 2)  # the second source "trained on"
    with pytest.raises(ConfigError, match=r"model.average\[1\] \(.*trunk1.safetensors\): weights [0-9a-f]{12}, "
                                          r"recorded [0-9a-f]{12}.*name the exact step_N folder"):
        resumed()


def test_eval_mode_reaches_the_blended_trunk_so_drop_path_is_off_in_evaluation():
    """The template that runs the blend is outside the module tree: `eval()` on the model holding
    the AveragedTrunk must still switch it (it stayed in training mode, so drop path kept dropping
    blocks in every evaluation of an averaged model)."""
    from ppma_scale.models import VideoClassifier, VideoViT, resolve_size
    torch.manual_seed(0)
    size = resolve_size("tiny")
    states = [VideoViT(size, num_frames=4, img_size=32, drop_path=0.5).state_dict() for _ in range(2)]
    trunk = AveragedTrunk(VideoViT(size, num_frames=4, img_size=32, drop_path=0.5), states)
    model = VideoClassifier(trunk, num_classes=3).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        first, second = model(clip), model(clip)
    torch.testing.assert_close(first, second)  # no random depth left
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(clip), model(clip))  # and it is back on for training


@pytest.mark.parametrize("mode", ["per_model", "per_tensor"])
def test_a_checkpointed_trunk_blends_and_learns_alpha_as_an_uncheckpointed_one(mode):
    """Checkpointed blocks recompute in the backward, after the blend's forward has put the
    template's own (meta) weights back: the recompute must see the blended weights again (it
    failed with 'Tensor on device meta', so vitl/vith align configs could not average)."""
    from ppma_scale.models import VideoViT, resolve_size
    size = resolve_size("tiny")
    torch.manual_seed(0)
    states = [VideoViT(size, num_frames=4, img_size=32).state_dict() for _ in range(2)]
    clip = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for every in (0, 1):
        trunk = AveragedTrunk(VideoViT(size, num_frames=4, img_size=32, act_checkpoint_every=every), states, mode)
        with torch.no_grad():
            trunk.alpha.normal_(generator=torch.Generator().manual_seed(1))
        trunk(clip).square().mean().backward()
        grads.append(trunk.alpha.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


CLASSES = ["walk", "squat", "jump", "wave"]


def classified_soup_inputs(tmp_path, *class_lists):
    """Weights files that record class names as `ppma-export` does (None: no record)."""
    import json

    from safetensors.torch import save_file
    paths = []
    for index, (state, classes) in enumerate(zip(trunk_states(len(class_lists)), class_lists)):
        paths.append(tmp_path / f"in{index}.safetensors")
        save_file(state, paths[-1], metadata=None if classes is None else {"classes": json.dumps(classes)})
    return paths


def test_average_cli_refuses_heads_of_another_class_order_and_the_soup_records_the_shared_one(tmp_path, capsys):
    """Heads of runs trained with data.classes in different orders were blended logit by logit (each
    logit a mix of two classes) without a word; resume and evaluation refuse such a label space."""
    import json

    from safetensors import safe_open

    from ppma_scale.average import main
    a, b = classified_soup_inputs(tmp_path, CLASSES, CLASSES[::-1])
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{a} and {b} were trained on different label spaces" in err
    assert "the same 4 classes in another order: #0 " in err and "--trunk" in err
    assert not out.exists()
    (tmp_path / "same").mkdir()
    c, d = classified_soup_inputs(tmp_path / "same", CLASSES, CLASSES)
    assert main([str(c), str(d), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["classes"]) == CLASSES
    capsys.readouterr()
    assert main([str(out), str(b), "--out", str(tmp_path / "again.safetensors")]) == 2  # a soup is checked too
    assert f"{out} and {b} were trained on different label spaces" in capsys.readouterr().err


def test_average_cli_refuses_other_class_sets_and_inputs_without_a_record_among_recorded_ones(tmp_path, capsys):
    from ppma_scale.average import main
    a, b, bare = classified_soup_inputs(tmp_path, CLASSES, CLASSES[:3] + ["run"], None)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 classes in" in err and "; only in" in err and "wave" in err and "run" in err
    assert main([str(a), str(bare), "--out", str(out)]) == 2
    assert f"{bare} records no class names, but {a} does" in capsys.readouterr().err
    assert not out.exists()


def test_average_cli_reads_the_classes_a_run_folder_records_before_merging_its_weights(tmp_path, capsys):
    """A run directory's class names come from its checkpoint's marker: a mismatch is refused before
    the (possibly large) ZeRO partitions are read."""
    import json

    from ppma_scale.average import main
    (a,) = classified_soup_inputs(tmp_path, CLASSES)
    tag = tmp_path / "run" / "checkpoints" / "step_00000004"
    tag.mkdir(parents=True)
    for name in ("rank_00000.pt", "mp_rank_00_model_states.pt"):  # never opened: the marker refuses first
        (tag / name).write_bytes(b"")
    (tag / "ppma_complete.json").write_text(json.dumps({"step": 4, "world_size": 1, "zero_stage": 0,
                                                        "classes": CLASSES[::-1]}))
    assert main([str(a), str(tmp_path / "run"), "--out", str(tmp_path / "soup.safetensors")]) == 2
    assert f"{a} and {tmp_path / 'run'} were trained on different label spaces" in capsys.readouterr().err


def test_average_cli_warns_when_no_input_records_the_classes_of_its_heads(tmp_path, capsys):
    """Checkpoints saved before class names were recorded can still be averaged, with a warning and a
    soup that records no classes (nothing is claimed); models without a head are averaged silently."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ppma_scale.average import main
    paths = []
    for index, state in enumerate(trunk_states(2)):
        paths.append(tmp_path / f"head{index}.safetensors")
        save_file({**state, "head.fc.weight": torch.full((4, 6), float(index))}, paths[-1])
    out = tmp_path / "soup.safetensors"
    assert main([str(p) for p in paths] + ["--out", str(out)]) == 0
    assert "none of the inputs records its class names" in capsys.readouterr().err
    with safe_open(str(out), framework="pt") as handle:
        assert "classes" not in handle.metadata()
    a, b = soup_inputs(tmp_path)
    assert main([str(a), str(b), "--out", str(tmp_path / "trunks.safetensors")]) == 0
    assert "WARNING" not in capsys.readouterr().err

"""Weights that travel: import from transformers / VideoMAE / OmniMAE-PPMA layouts and export to
transformers, compared by outputs against randomly initialised transformers VideoMAE models."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

from ppma_scale.convert import main as convert_main
from ppma_scale.models import MAE, VideoClassifier
from ppma_scale.models import pos_embed as pe
from ppma_scale.models.convert import (detect_layout, export_hf, init_trunk_from, load_trunk_weights,
                                       load_weights_file, to_trunk_state_dict)

REPO = Path(__file__).resolve().parents[2]
HF_GEOMETRY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, image_size=32,
                   patch_size=8, num_frames=4, tubelet_size=2, layer_norm_eps=1e-6)


def randomised(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="module")
def hf_classifier():
    return randomised(VideoMAEForVideoClassification(VideoMAEConfig(**HF_GEOMETRY, num_labels=5)))


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))


def hf_features(hf, clip):
    with torch.no_grad():
        return hf.videomae(clip.transpose(1, 2)).last_hidden_state


def imported_features(make_encoder, state, clip, final_norm=False, layer_scale=None):
    trunk, layout = to_trunk_state_dict(state)
    encoder = make_encoder(size=dict(depth=2), final_norm=final_norm, pos_embed="sincos",
                           layer_scale=layer_scale).eval()
    report = load_trunk_weights(encoder, trunk, layout)
    with torch.no_grad():
        return encoder(clip), layout, report


def videomae_layout(hf_sd, pretrain: bool):
    """The transformers weights renamed the way MCG-NJU VideoMAE names them (qkv + q_bias/v_bias),
    with LayerScale gammas whose effect is cancelled in the projections (outputs unchanged)."""
    out = {"patch_embed.proj.weight": hf_sd["videomae.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hf_sd["videomae.embeddings.patch_embeddings.projection.bias"]}
    for i in range(2):
        src, dst = f"videomae.encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        out[dst + "attn.qkv.weight"] = torch.cat([hf_sd[f"{att}{n}.weight"] for n in ("query", "key", "value")])
        out[dst + "attn.q_bias"], out[dst + "attn.v_bias"] = hf_sd[att + "query.bias"], hf_sd[att + "value.bias"]
        for ours, theirs, gamma in (("attn.proj", "attention.output.dense", "gamma_1"), ("mlp.fc2", "output.dense", "gamma_2")):
            g = 0.5 + torch.rand(48)
            out[dst + gamma] = g
            out[f"{dst}{ours}.weight"] = hf_sd[f"{src}{theirs}.weight"] / g[:, None]
            out[f"{dst}{ours}.bias"] = hf_sd[f"{src}{theirs}.bias"] / g
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense")):
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = hf_sd[f"{src}{theirs}.{p}"]
    if pretrain:  # MAE checkpoint: encoder.* plus the decoder parts that are dropped
        out = {f"encoder.{k}": v for k, v in out.items()}
        out.update({"encoder.norm.weight": torch.ones(48), "encoder.norm.bias": torch.zeros(48),
                    "encoder_to_decoder.weight": torch.randn(24, 48), "mask_token": torch.zeros(1, 1, 24),
                    "decoder.blocks.0.attn.qkv.weight": torch.randn(72, 24), "decoder.head.weight": torch.randn(384, 24)})
    else:
        out.update({"fc_norm.weight": hf_sd["fc_norm.weight"], "fc_norm.bias": hf_sd["fc_norm.bias"],
                    "head.weight": hf_sd["classifier.weight"], "head.bias": hf_sd["classifier.bias"]})
    return out


def test_import_transformers_matches_hidden_states(hf_classifier, clip, make_encoder):
    ours, layout, report = imported_features(make_encoder, hf_classifier.state_dict(), clip)
    assert layout == "hf" and report["pos_embed"].startswith("1-D sin-cos")
    torch.testing.assert_close(ours, hf_features(hf_classifier, clip), atol=1e-4, rtol=0)
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
              for k, v in hf_classifier.state_dict().items()}  # transformers 4.x key names
    torch.testing.assert_close(imported_features(make_encoder, legacy, clip)[0], ours)


def test_import_transformers_model_with_final_layernorm(clip, make_encoder):
    hf = randomised(VideoMAEModel(VideoMAEConfig(**HF_GEOMETRY, use_mean_pooling=False)))
    ours, layout, _ = imported_features(make_encoder, hf.state_dict(), clip, final_norm=True)
    with torch.no_grad():
        expected = hf(clip.transpose(1, 2)).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pretrain", [True, False])
def test_import_videomae_layouts(hf_classifier, clip, make_encoder, pretrain):
    state = videomae_layout(hf_classifier.state_dict(), pretrain)
    ours, layout, report = imported_features(make_encoder, state, clip, layer_scale=0.1)
    assert layout == "videomae"
    assert report["dropped"] == (["norm.bias", "norm.weight"] if pretrain else [])
    torch.testing.assert_close(ours, hf_features(hf_classifier, clip), atol=1e-4, rtol=0)


def test_import_omnivision_ppma_trunk(hf_classifier, clip, make_encoder):
    mapped = videomae_layout(hf_classifier.state_dict(), pretrain=False)
    state = {"heads.0.weight": torch.randn(5, 48), "trunk.decoder.norm.weight": torch.ones(8),
             "trunk.mask_token": torch.zeros(1, 48), "trunk.pos_embed": pe.sincos_flat(32, 48),
             "trunk.norm.weight": torch.ones(48), "trunk.norm.bias": torch.zeros(48)}
    for key, value in mapped.items():
        if key.startswith("patch_embed"):
            state["trunk." + key.replace("proj.", "proj.1.")] = value
        elif key.endswith(("q_bias", "v_bias")):
            continue
        elif key.endswith(("gamma_1", "gamma_2")):
            state["trunk." + key.replace("gamma_", "layer_scale_gamma")] = value.view(1, 1, -1)
        elif key.startswith("blocks."):
            state["trunk." + key] = value
    for i in range(2):  # omnivision keeps a full qkv bias; a key bias does not change attention
        q_bias, v_bias = mapped[f"blocks.{i}.attn.q_bias"], mapped[f"blocks.{i}.attn.v_bias"]
        state[f"trunk.blocks.{i}.attn.qkv.bias"] = torch.cat([q_bias, torch.randn(48), v_bias])
    ours, layout, report = imported_features(make_encoder, state, clip, layer_scale=0.1)
    assert layout == "omnivision" and report["pos_embed"].startswith("loaded; model.pos_embed sincos_1d")
    torch.testing.assert_close(ours, hf_features(hf_classifier, clip), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="class token"):
        to_trunk_state_dict({**state, "trunk.cls_token": torch.zeros(1, 1, 48)})


def test_export_classifier_reloads_in_transformers(tmp_path, clip, make_encoder):
    torch.manual_seed(1)
    encoder = make_encoder(size=dict(depth=2), final_norm=False, pos_embed="sincos_1d", layer_scale=0.7)
    model = randomised(VideoClassifier(encoder, num_classes=5))
    export_hf(model, tmp_path / "hf", id2label={i: f"action{i}" for i in range(5)})
    reloaded = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.id2label[3] == "action3"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clip.transpose(1, 2)).logits, model(clip), atol=1e-4, rtol=0)


def test_export_trunk_and_mae(tmp_path, clip, make_encoder):
    mae = MAE(randomised(make_encoder(size=dict(depth=2), pos_embed="sincos_1d")), decoder_depth=1)
    export_hf(mae, tmp_path / "trunk")
    hf = VideoMAEModel.from_pretrained(tmp_path / "trunk").eval()
    mae.encoder.norm = torch.nn.Identity()  # transformers pools un-normalised tokens (use_mean_pooling)
    with torch.no_grad():
        torch.testing.assert_close(hf(clip.transpose(1, 2)).last_hidden_state, mae.encoder(clip), atol=1e-4, rtol=0)
    classifier = VideoMAEForVideoClassification.from_pretrained(tmp_path / "trunk", num_labels=3)
    assert classifier.classifier.out_features == 3  # a fresh head on the exported trunk


def test_export_refuses_what_transformers_cannot_compute(tmp_path, make_encoder):
    with pytest.raises(ValueError, match="model.pos_embed=sincos_1d"):
        export_hf(make_encoder(pos_embed="sincos"), tmp_path / "a")
    export_hf(make_encoder(pos_embed="sincos"), tmp_path / "b", allow_pos_mismatch=True)
    assert (tmp_path / "b" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="'linear' head"):
        export_hf(VideoClassifier(make_encoder(pos_embed="sincos_1d"), 3, head="probe"), tmp_path / "c")


def test_round_trip_of_our_own_checkpoints(tmp_path, make_encoder, clip):
    torch.manual_seed(0)
    mae = MAE(make_encoder(layer_scale=0.3), decoder_depth=1)
    trunk, layout = to_trunk_state_dict({f"module.{k}": v for k, v in mae.state_dict().items()})
    assert layout == "ours" and not any(k.startswith(("decoder", "mask_token")) for k in trunk)
    save_file(mae.state_dict(), tmp_path / "mae.safetensors")
    fresh = make_encoder(layer_scale=0.3)
    assert init_trunk_from(fresh, tmp_path / "mae.safetensors")["layout"] == "ours"
    torch.testing.assert_close(fresh(clip), mae.encoder(clip))


def test_adaptations_and_their_limits(make_encoder):
    source = make_encoder(pos_embed="learned", qkv_bias=False)
    trunk = source.state_dict()
    target = make_encoder(pos_embed="learned", qkv_bias=True)
    target.grid, target.num_patches = (4, 4, 4), 64  # as if built for 8 frames
    target.pos_embed = torch.nn.Parameter(torch.zeros(1, 64, 48))
    report = load_trunk_weights(target, trunk)
    assert report["pos_embed"] == ("resampled (2, 4, 4) -> (4, 4, 4) (source grid guessed from the token count: "
                                   "pass it if this is wrong)")
    assert load_trunk_weights(target, trunk, source_grid=(2, 4, 4))["pos_embed"] == "resampled (2, 4, 4) -> (4, 4, 4)"
    assert "blocks.0.attn.qkv.bias" in report["filled"] and not target.blocks[0].attn.qkv.bias.any()
    fixed = make_encoder(pos_embed="sincos_1d")
    flat = {**fixed.state_dict(), "pos_embed": pe.sincos_flat(16, 48)}
    assert "regenerated" in load_trunk_weights(fixed, flat, source_grid=(1, 4, 4))["pos_embed"]
    torch.testing.assert_close(fixed.pos_embed, pe.sincos_flat(32, 48))
    with pytest.raises(ValueError, match="set model.layer_scale"):
        load_trunk_weights(make_encoder(), make_encoder(layer_scale=0.1).state_dict())
    wide = make_encoder(size=dict(embed_dim=60, num_heads=3)).state_dict()
    with pytest.raises(ValueError, match=r"into 60 channels, this model 2x8x8 into 48 .*: set model.embed_dim=60 "
                                         r"\(or the model.size of that width\)"):
        load_trunk_weights(make_encoder(), wide)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        detect_layout({"fc.weight": torch.zeros(2)})


def test_an_image_vit_is_named_as_one():
    image = {"patch_embed.proj.weight": torch.zeros(48, 3, 8, 8), "blocks.0.attn.qkv.weight": torch.zeros(144, 48)}
    with pytest.raises(ValueError, match=r"shape \(48, 3, 8, 8\): a 2-D \(image\) ViT, not a video one"):
        to_trunk_state_dict(image)
    hf_image = {"embeddings.patch_embeddings.projection.weight": torch.zeros(48, 3, 8, 8),  # transformers ViTModel
                "encoder.layer.0.attention.attention.query.weight": torch.zeros(48, 48)}
    with pytest.raises(ValueError, match="not a transformers VideoMAE state dict"):
        to_trunk_state_dict(hf_image)


class NotATensor:
    pass


def test_loading_never_runs_pickled_code(tmp_path, make_encoder):
    sd = make_encoder().state_dict()
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-3), "epoch": 3}, tmp_path / "videomae.pth")
    assert load_weights_file(tmp_path / "videomae.pth").keys() == sd.keys()
    torch.save({"model": sd, "evil": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="without running pickled code"):
        load_weights_file(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError):
        load_weights_file(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_weights_file(tmp_path)


def test_cli_videomae_to_transformers_and_trunk(tmp_path, hf_classifier, clip):
    torch.save({"module": videomae_layout(hf_classifier.state_dict(), pretrain=False)}, tmp_path / "ft.pth")
    args = [str(tmp_path / "ft.pth"), str(tmp_path / "hf"), "--to", "hf", "--num-frames", "4", "--img-size", "32",
            "--num-heads", "3"]
    assert convert_main(args) == 0
    reloaded = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clip.transpose(1, 2)).logits, hf_classifier(clip.transpose(1, 2)).logits,
                                   atol=1e-4, rtol=0)
    assert convert_main([str(tmp_path / "ft.pth"), str(tmp_path / "t.safetensors"), "--num-frames", "4",
                         "--img-size", "32"]) == 2  # 48 x 2 is not in the size table and no --num-heads
    done = subprocess.run([sys.executable, "-m", "ppma_scale.convert", str(tmp_path / "hf"),
                           str(tmp_path / "t.safetensors"), "--num-frames", "4", "--img-size", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # heads from hf/config.json
    assert done.returncode == 0, done.stderr
    assert '"layout": "hf"' in done.stdout
    trunk = load_weights_file(tmp_path / "t.safetensors")
    assert detect_layout(trunk) == "ours" and trunk["pos_embed"].shape == (1, 32, 48)


@pytest.fixture()
def our_mae_file(tmp_path, make_encoder):
    torch.manual_seed(0)
    mae = MAE(make_encoder(size=dict(depth=2)), decoder_depth=1)
    save_file(mae.state_dict(), tmp_path / "mae.safetensors")
    return tmp_path / "mae.safetensors"


GEOMETRY = ["--num-frames", "4", "--img-size", "32", "--num-heads", "3"]


@pytest.mark.parametrize("output", ["mae.safetensors", "./x/../mae.safetensors", "link.safetensors"])
def test_cli_refuses_to_overwrite_its_input(tmp_path, capsys, our_mae_file, output):
    (tmp_path / "x").mkdir()
    (tmp_path / "link.safetensors").symlink_to(our_mae_file)
    before = our_mae_file.read_bytes()
    assert convert_main([str(our_mae_file), str(tmp_path / output), *GEOMETRY]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert our_mae_file.read_bytes() == before


def test_cli_refuses_to_export_over_the_hugging_face_folder_it_reads(tmp_path, capsys, our_mae_file):
    hf = tmp_path / "hf"
    assert convert_main([str(our_mae_file), str(hf), "--to", "hf", "--allow-pos-mismatch", *GEOMETRY]) == 0
    before = (hf / "model.safetensors").read_bytes()
    for source in (hf, hf / "model.safetensors"):
        assert convert_main([str(source), str(hf), "--to", "hf", "--allow-pos-mismatch", *GEOMETRY]) == 2
        assert "would overwrite the input" in capsys.readouterr().err
    assert (hf / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors"]  # no temporaries left


@pytest.mark.parametrize("to", ["trunk", "hf"])
def test_cli_keeps_an_existing_output_unless_told_to_replace_it(tmp_path, capsys, our_mae_file, to):
    out = tmp_path / ("hf" if to == "hf" else "t.safetensors")
    args = [str(our_mae_file), str(out), "--to", to, "--allow-pos-mismatch", *GEOMETRY]
    written = out / "model.safetensors" if to == "hf" else out
    assert convert_main(args) == 0
    written.write_bytes(b"weights the user made by hand")
    assert convert_main(args) == 2
    assert "already exist" in capsys.readouterr().err and written.read_bytes() == b"weights the user made by hand"
    assert convert_main(args + ["--overwrite"]) == 0
    assert written.read_bytes() != b"weights the user made by hand" and load_weights_file(written)


@pytest.mark.parametrize("flags, message", [
    (["--num-frames", "0", "--img-size", "32", "--num-heads", "3"], "--num-frames"),
    (["--num-frames", "5", "--img-size", "32", "--num-heads", "3"], "--num-frames"),
    (["--num-frames", "4", "--img-size", "30", "--num-heads", "3"], "--img-size"),
    (["--num-frames", "4", "--img-size", "32", "--num-heads", "5"], "--num-heads"),
    (["--num-frames", "4", "--img-size", "32", "--num-heads", "0"], "--num-heads"),
])
def test_cli_bad_geometry_is_one_line_naming_the_flag(tmp_path, capsys, our_mae_file, flags, message):
    assert convert_main([str(our_mae_file), str(tmp_path / "t.safetensors"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppma-convert: error: ") and message in err and "Traceback" not in err


def test_cli_pos_mismatch_error_names_the_cli_flag(tmp_path, capsys, our_mae_file):
    assert convert_main([str(our_mae_file), str(tmp_path / "hf"), "--to", "hf", *GEOMETRY]) == 2
    err = capsys.readouterr().err
    assert "pass --allow-pos-mismatch" in err and "allow_pos_mismatch=True" not in err


def mae_task(init, data_train="unused.json", **model):
    from ppma_scale.config import build_config
    from ppma_scale.engine.tasks import build_task
    cfg = build_config({"run": {"task": "mae"}, "data": {"train": data_train, "num_frames": 4, "img_size": 32},
                        "model": {"size": "tiny", "embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8,
                                  "init": init, **model}})
    return build_task(cfg)


def solo():
    from ppma_scale.engine.dist import DistInfo
    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def test_mae_task_starts_its_encoder_from_model_init(our_mae_file):
    from safetensors.torch import load_file
    model = mae_task(str(our_mae_file)).build_model(solo())
    source = load_file(our_mae_file)
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, source[f"encoder.{name}"], rtol=0, atol=0, msg=name)
    assert not torch.equal(model.decoder_embed.weight, source["decoder_embed.weight"])  # the decoder starts fresh


def test_mae_task_checks_model_init_early_unless_resuming(tmp_path):
    import json
    from ppma_scale.data.manifest import FORMAT
    manifest = tmp_path / "manifest.json"  # validate reads the manifest and stats its shard (never opens it)
    (tmp_path / "s.tar").write_bytes(b"0" * 10)
    shard = {"url": "s.tar", "samples": 8, "bytes": 10, "sha256": ""}  # one global batch (micro_batch 8)
    manifest.write_text(json.dumps({"format": FORMAT, "dataset": "d", "classes": ["a"], "shards": [shard]}))
    with pytest.raises(FileNotFoundError, match="model.init: .*gone does not exist"):
        mae_task(str(tmp_path / "gone"), data_train=str(manifest)).validate()
    resumed = mae_task(str(tmp_path / "gone"), data_train=str(manifest))
    resumed.resume_from = tmp_path  # the checkpoint holds every weight: model.init is not read
    resumed.validate()
    resumed.build_model(solo())


def test_mae_task_refuses_model_average(our_mae_file):
    task = mae_task(None, data_train=str(our_mae_file), average=[str(our_mae_file), str(our_mae_file)])
    with pytest.raises(ValueError, match="model.average .*stage 1 \\(MAE\\) trains the whole trunk"):
        task.validate()


def test_a_sincos_table_is_regenerated_when_frames_and_resolution_both_differ():
    """A stage-2 trunk at 8 frames x 64 px (grid 4x4x4, 64 tokens) loaded for 4 frames x 32 px
    (grid 2x2x2): 64 tokens also fit "only the frames differ" (16x2x2), which is not what it was."""
    from ppma_scale.models.sizes import resolve_size
    from ppma_scale.models.vit import VideoViT
    size = resolve_size("tiny", embed_dim=48, depth=1, num_heads=3, patch_size=16)
    source = VideoViT(size, num_frames=8, img_size=64, pos_embed="sincos")
    target = VideoViT(size, num_frames=4, img_size=32, pos_embed="sincos")
    assert tuple(source.grid) == (4, 4, 4) and tuple(target.grid) == (2, 2, 2)
    report = load_trunk_weights(target, source.state_dict())
    assert report["pos_embed"] == "3-D sin-cos of grid (4, 4, 4) regenerated for (2, 2, 2)"
    torch.testing.assert_close(target.pos_embed, pe.sincos_3d((2, 2, 2), 48))


@pytest.mark.parametrize("kind", ["sincos", "learned", "sincos_1d"])
def test_encoder_rebuilt_at_another_geometry_keeps_the_trunks_kind_of_position_table(kind):
    """ppma-convert --num-frames/--img-size other than the trunk's: the rebuilt encoder must still
    regenerate (or resample) the trunk's kind of table, so at the trunk's own geometry it computes
    what the trunk did (it used to fall back to 1-D sin-cos whenever the table's length differed)."""
    from ppma_scale.models import VideoViT, resolve_size
    from ppma_scale.models.convert import encoder_from_trunk, to_trunk_state_dict
    torch.manual_seed(0)
    source = VideoViT(resolve_size("tiny"), num_frames=4, img_size=32, pos_embed=kind).eval()
    if kind == "learned":
        torch.nn.init.normal_(source.pos_embed, std=0.02)
    trunk, layout = to_trunk_state_dict(source.state_dict())
    rebuilt = encoder_from_trunk(trunk, 8, 48, None).eval()
    assert rebuilt.pos_embed_kind == kind
    if kind != "learned":  # fixed tables regenerate exactly (a learned one is resampled: not comparable)
        load_trunk_weights(rebuilt, trunk, layout)
        clip = torch.randn(1, 3, 4, 32, 32)
        with torch.no_grad():
            assert torch.allclose(rebuilt(clip), source(clip), atol=1e-5)


def test_a_hugging_face_folder_reports_only_its_head_as_dropped(tmp_path, hf_classifier):
    """model.init=<HF folder>: the trunk's videomae.* tensors are renamed on the way in, so only the
    classifier head is left out (every tensor used to be listed as dropped, the trunk included)."""
    from ppma_scale.engine.pretrained import read_trunk
    hf_classifier.save_pretrained(tmp_path / "hf")
    source = read_trunk(tmp_path / "hf")
    assert source.layout == "hf" and {k.split(".")[0] for k in source.dropped} == {"classifier", "fc_norm"}
    assert "dropped 4 non-trunk tensors (classifier, fc_norm)" in source.describe()


def test_cli_points_a_run_directory_to_export(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert convert_main([str(run), str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{run} is a training run or checkpoint folder: export its weights first" in err
    assert f"python -m ppma_scale.export {run}" in err and not (tmp_path / "t.safetensors").exists()

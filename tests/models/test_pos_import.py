"""Position tables of imported weights (models/pos_import.py): a stated or recorded source grid is
used, bf16-rounded fixed tables are still fixed, a fixed-table model takes the weights' kind."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ppma_scale.convert import main as convert_main
from ppma_scale.models import pos_embed as pe
from ppma_scale.models.convert import load_trunk_weights, load_weights_file, pos_embed_kind


def test_position_tables_follow_the_stated_grid_and_their_kind(make_encoder):
    """A stated source grid is used even when the token count matches; a bf16-rounded fixed table is
    still recognised as fixed; a fixed-table model takes the weights' kind of fixed table (so other
    clip sizes regenerate VideoMAE's 1-D table, not a 3-D one); a learned table needs a learned model."""
    learned = make_encoder(pos_embed="learned")
    with torch.no_grad():
        learned.pos_embed.normal_()
    trunk = learned.state_dict()  # grid (2, 4, 4): 32 tokens, as (8, 2, 2) also has
    same_count = make_encoder(pos_embed="learned")
    same_count.grid = (8, 2, 2)
    report = load_trunk_weights(same_count, trunk, source_grid=(2, 4, 4))
    assert report["pos_embed"] == "resampled (2, 4, 4) -> (8, 2, 2)"
    expected = pe.resample(trunk["pos_embed"], (2, 4, 4), (8, 2, 2))
    torch.testing.assert_close(same_count.pos_embed.detach(), expected)
    with pytest.raises(ValueError, match=r"has 32 tokens, not the 64 of its stated grid \(4, 4, 4\)"):
        load_trunk_weights(make_encoder(pos_embed="learned"), trunk, source_grid=(4, 4, 4))

    for kind in ("sincos", "sincos_1d"):
        rounded = {k: v.to(torch.bfloat16) for k, v in make_encoder(pos_embed=kind).state_dict().items()}
        assert pos_embed_kind(rounded["pos_embed"]) == kind
    model = make_encoder(pos_embed="sincos")
    flat = {**model.state_dict(), "pos_embed": pe.sincos_flat(32, 48)}
    report = load_trunk_weights(model, flat)
    assert model.pos_embed_kind == "sincos_1d" and "model.pos_embed sincos_1d" in report["pos_embed"]
    torch.testing.assert_close(model.pos_embed_for((4, 4, 4)), pe.sincos_flat(64, 48))
    with pytest.raises(ValueError, match="learned but the model's is fixed \\(sincos\\): set model.pos_embed: learned"):
        load_trunk_weights(make_encoder(pos_embed="sincos"), trunk)


def test_a_recorded_token_grid_resamples_a_learned_table_from_the_right_grid(tmp_path, capsys):
    """16 tokens could be (1, 4, 4) or (4, 2, 2): a trunk file written by ppma-convert records its
    grid, so converting it for another clip size resamples from the grid it really had."""
    from safetensors import safe_open

    from ppma_scale.models import VideoViT, resolve_size
    from ppma_scale.models.convert import recorded_token_grid
    torch.manual_seed(0)
    source = VideoViT(resolve_size("tiny", embed_dim=48, depth=1, num_heads=3, patch_size=8), num_frames=8,
                      img_size=16, pos_embed="learned")  # grid (4, 2, 2)
    with torch.no_grad():
        source.pos_embed.normal_()
    save_file(source.state_dict(), tmp_path / "bare.safetensors")  # no record of its grid
    heads = ["--num-heads", "3"]
    assert convert_main([str(tmp_path / "bare.safetensors"), str(tmp_path / "guessed.safetensors"), "--num-frames",
                         "4", "--img-size", "32", *heads]) == 0
    assert "source grid guessed" in capsys.readouterr().out
    assert convert_main([str(tmp_path / "bare.safetensors"), str(tmp_path / "t8.safetensors"), "--num-frames", "8",
                         "--img-size", "16", *heads]) == 0
    with safe_open(str(tmp_path / "t8.safetensors"), "pt") as handle:
        assert handle.metadata()["token_grid"] == "4,2,2"
    assert recorded_token_grid(tmp_path / "t8.safetensors", load_weights_file(tmp_path / "t8.safetensors")) == (4, 2, 2)
    assert convert_main([str(tmp_path / "t8.safetensors"), str(tmp_path / "t4.safetensors"), "--num-frames", "4",
                         "--img-size", "32", *heads]) == 0
    assert "resampled (4, 2, 2) -> (2, 4, 4)\"" in capsys.readouterr().out
    expected = pe.resample(source.pos_embed.detach(), (4, 2, 2), (2, 4, 4))
    torch.testing.assert_close(load_weights_file(tmp_path / "t4.safetensors")["pos_embed"], expected)

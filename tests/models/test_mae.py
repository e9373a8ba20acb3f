"""MAE: what the encoder and decoder see, the loss against independently computed targets,
decoder masking, mask validation, and that it learns."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from ppma_scale.models import MAE
from ppma_scale.models.vit import gather_tokens


def reference_targets(video, index, norm, tubelet=2, patch=8):
    """Per-patch targets computed the way PPMA's loss does (reshape + einsum), then gathered."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = torch.einsum("nctphqwr->nthwpqrc", x).reshape(b, -1, tubelet * patch * patch, c)
    if norm == "per_channel":
        x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, keepdim=True) + 1e-6) ** 0.5
        x = x.flatten(2)
    elif norm == "all":
        x = x.flatten(2)
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** 0.5
    else:
        x = x.flatten(2)
    return torch.stack([x[i, index[i]] for i in range(b)])


def record_lengths(module):
    """Token counts of the inputs `module` sees."""
    seen = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    return seen


@pytest.mark.parametrize("norm", ["per_channel", "all", "none"])
def test_loss_is_mse_on_masked_tokens_against_normalised_patches(make_encoder, video, make_masks, norm):
    torch.manual_seed(0)
    mae = MAE(make_encoder(), decoder_depth=2, target_norm=norm)
    mask = make_masks(2, 32, 24)
    loss, extras = mae(video, mask)
    target_idx = extras["target_idx"]
    assert target_idx.shape == (2, 24) and mask.gather(1, target_idx).all()
    assert torch.equal(target_idx, target_idx.sort(1).values)  # ascending positions
    expected = (extras["pred"] - reference_targets(video, target_idx, norm)).square().mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_encoder_sees_visible_tokens_only_and_decoder_all(small_mae, video, make_masks):
    encoder_seen = record_lengths(small_mae.encoder.blocks[0])
    decoder_seen = record_lengths(small_mae.decoder_blocks[0])
    small_mae(video, make_masks(2, 32, 24))
    assert encoder_seen == [8] and decoder_seen == [32]


def test_decoder_matches_a_full_decoder_sliced_to_the_targets(small_mae, video, make_masks):
    """The decoder's last block computes only the targets; a reference decoder computes every
    token through every block and keeps the targets' predictions."""
    mae = small_mae
    loss, extras = mae(video, make_masks(2, 32, 24))
    visible_idx, target_idx = extras["visible_idx"], extras["target_idx"]
    latent = mae.encoder(video, visible_idx)
    pos = mae.decoder_pos_embed
    x = torch.cat([mae.decoder_embed(latent) + gather_tokens(pos, visible_idx),
                   mae.mask_token + gather_tokens(pos, target_idx)], dim=1)
    for block in mae.decoder_blocks:
        x = block(x)
    reference = mae.decoder_pred(mae.decoder_norm(x))[:, -target_idx.shape[1]:]
    torch.testing.assert_close(extras["pred"], reference, atol=1e-5, rtol=0)


def test_decoder_masking_reconstructs_only_the_chosen_tokens(small_mae, video, make_masks):
    mask = make_masks(2, 32, 24)
    decoder_mask = mask & make_masks(2, 32, 16, seed=5)
    counts = decoder_mask.sum(1)
    keep = int(counts.min())
    for row in range(2):  # trim to the same count per row, as the contract requires
        extra = decoder_mask[row].nonzero().flatten()[keep:]
        decoder_mask[row, extra] = False
    decoder_seen = record_lengths(small_mae.decoder_blocks[0])
    loss, extras = small_mae(video, mask, decoder_mask)
    assert decoder_seen == [8 + keep]
    assert extras["pred"].shape == (2, keep, 3 * 2 * 8 * 8)
    chosen = torch.zeros_like(mask).scatter(1, extras["target_idx"], True)
    assert torch.equal(chosen, decoder_mask)
    expected = (extras["pred"] - reference_targets(video, extras["target_idx"], "per_channel")).square().mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_per_channel_targets_ignore_per_channel_affine_normalisation(small_mae, video):
    index = torch.arange(32).expand(2, 32)
    scale = torch.tensor([0.2, 0.5, 2.0]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(small_mae.targets(video * scale + 0.3, index), small_mae.targets(video, index),
                               atol=1e-3, rtol=1e-3)


def test_patchify_round_trip(small_mae, video):
    patches = small_mae.patchify(video).flatten(2)
    assert patches.shape == (2, 32, 128 * 3)
    assert torch.equal(small_mae.unpatchify(patches, (2, 4, 4)), video)


@pytest.fixture()
def one_thread():
    """Tiny models run faster, and steadier on a busy machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learns_on_a_fixed_batch(small_mae, video, make_masks, one_thread):
    mask = make_masks(2, 32, 24)
    optimizer = torch.optim.AdamW(small_mae.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        loss, _ = small_mae(video, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]  # memorising a noise batch: ~1.14 -> ~0.88
    assert small_mae.mask_token.grad.abs().sum() > 0


def test_other_grid_and_learned_tables(make_encoder, make_masks):
    mae = MAE(make_encoder(pos_embed="learned"), decoder_depth=1)
    assert {"mask_token", "decoder_pos_embed", "encoder.pos_embed"} <= mae.no_weight_decay()
    video = torch.randn(1, 3, 8, 32, 32)  # 4x4x4 tokens instead of 2x4x4
    loss, extras = mae(video, make_masks(1, 64, 48))
    loss.backward()
    assert extras["pred"].shape == (1, 48, 384) and mae.decoder_pos_embed.grad.abs().sum() > 0


def test_mask_errors(small_mae, video, make_masks):
    mask = make_masks(2, 32, 24)
    uneven = mask.clone()
    uneven[0, mask[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number of tokens"):
        small_mae(video, uneven)
    with pytest.raises(ValueError, match=r"bool tensor of shape \(B, 32\)"):
        small_mae(video, mask.float())
    with pytest.raises(ValueError, match=r"bool tensor of shape \(B, 32\)"):
        small_mae(video, mask[:, :16])
    with pytest.raises(ValueError, match="some but not all"):
        small_mae(video, torch.ones(2, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="subset of mask"):
        small_mae(video, mask, ~mask)
    with pytest.raises(ValueError, match="same, non-zero number"):
        small_mae(video, mask, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="mae.target_norm"):
        MAE(small_mae.encoder, target_norm="pixel")
    with pytest.raises(ValueError, match="divisible by mae.decoder_heads"):
        MAE(small_mae.encoder, decoder_dim=96, decoder_heads=5)


def loss_and_gradients(model, video, mask):
    """(loss, {parameter name: gradient}) of one MAE forward and backward."""
    loss, _ = model(video, mask)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_compiling_covers_the_decoder_and_its_last_token_block(make_encoder, video, make_masks):
    """`model.compile` compiles the decoder's blocks too, its last (targets-only) block included,
    and changes neither the keys nor the loss and gradients (checkpointing on)."""
    graphs = []

    def recording_backend(graph_module, _example_inputs):
        out = next(n for n in graph_module.graph.nodes if n.op == "output").args[0]
        graphs.append([tuple(v.meta["example_value"].shape) for v in out if hasattr(v, "meta")])
        return graph_module.forward

    torch.manual_seed(0)
    plain = MAE(make_encoder(act_checkpoint_every=1), decoder_depth=2)
    compiled = MAE(make_encoder(act_checkpoint_every=1, compile_blocks={"backend": recording_backend}),
                   decoder_depth=2)
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(b._compiled_call_impl is not None for b in [*compiled.encoder.blocks, *compiled.decoder_blocks])
    results = [loss_and_gradients(model, video, make_masks(2, 32, 24)) for model in (plain, compiled)]
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-5, rtol=1e-4, msg=name)
    outputs = {shape for graph in graphs for shape in graph}
    assert {(2, 8, 48), (2, 32, 32), (2, 24, 32)} <= outputs  # encoder, decoder, last block on the 24 targets


def test_gpu_bench_split_baseline_is_the_same_model(small_mae, video, make_masks):
    """bench/gpu's "ours-timm-split" row (timm's q/k/v split put back) computes the same loss and
    gradients as ours, so its time against ours is the split's cost alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
    from timm_split import use_timm_split

    baseline = copy.deepcopy(small_mae)
    use_timm_split(baseline)
    results = [loss_and_gradients(model, video, make_masks(2, 32, 24)) for model in (small_mae, baseline)]
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(grad, results[1][1][name]) for name, grad in results[0][1].items())
    assert baseline.decoder_blocks[-1].attn.forward.__func__.__name__ == "timm_split_forward"


def test_a_bf16_mae_takes_the_fp32_clip_and_builds_its_targets_from_it(make_encoder, make_masks):
    """The MAE task hands the model its clip in fp32: the tubelet embedding casts what it embeds,
    and the per-patch targets come from unrounded pixels. From a bf16-rounded clip they were off by
    several percent in bright, flat patches (normalised values near 2, where bf16 steps are about
    half a grey level, and the per-patch normalisation divides by a small spread)."""
    torch.manual_seed(0)
    mae = MAE(make_encoder(), decoder_depth=2).to(torch.bfloat16)
    grey = torch.randint(228, 237, (2, 3, 4, 32, 32), generator=torch.Generator().manual_seed(2)).float()
    video = (grey / 255 - 0.45) / 0.225  # bright, low contrast, normalised as the loader does
    mask = make_masks(2, 32, 24)
    loss, extras = mae(video, mask)
    exact = reference_targets(video, extras["target_idx"], "per_channel")
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(extras["pred"].float(), exact))
    rounded = reference_targets(video.bfloat16().float(), extras["target_idx"], "per_channel")
    assert (rounded - exact).norm() / exact.norm() > 0.02  # what the bf16 clip gave

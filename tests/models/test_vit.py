"""VideoViT: equivalences (SDPA vs explicit attention, checkpointed vs not, token dropping vs full
encoder), position tables, LayerScale, drop path, and clear errors."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention
from timm.optim import param_groups_layer_decay
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

from ppma_scale.models import pos_embed as pe
from ppma_scale.models import resolve_size, set_attention
from ppma_scale.models.vit import VideoAttention, VideoViT, gather_tokens, run_blocks


def forward_backward(model, video, visible_idx=None):
    model.zero_grad(set_to_none=True)
    out = model(video, visible_idx)
    (out.square().mean() + out.mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads


def assert_same(a, b, atol):
    out_a, grads_a = a
    out_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=1e-4, msg=name)


def test_sdpa_matches_explicit_attention(make_encoder, video):
    torch.manual_seed(0)
    model = make_encoder(qkv_bias=True, layer_scale=0.5)
    sdpa = forward_backward(model, video)
    set_attention(model, "math")
    assert not model.blocks[0].attn.fused_attn
    math = forward_backward(model, video)
    assert_same(sdpa, math, atol=2e-5)
    with pytest.raises(ValueError, match="'sdpa' or 'math'"):
        set_attention(model, "flash")


def saved_bytes(model, video):
    """Bytes of activations autograd keeps for backward during one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(video)
    return total, out


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_same_result_less_memory(make_encoder, video, every):
    torch.manual_seed(0)
    plain = make_encoder()
    ckpt = make_encoder(act_checkpoint_every=every)
    ckpt.load_state_dict(plain.state_dict())
    assert_same(forward_backward(plain, video), forward_backward(ckpt, video), atol=1e-6)
    plain_bytes, _ = saved_bytes(plain, video)
    ckpt_bytes, _ = saved_bytes(ckpt, video)
    assert ckpt_bytes < plain_bytes * (0.5 if every == 1 else 0.9)
    with torch.no_grad():  # nothing to checkpoint without gradients
        torch.testing.assert_close(ckpt(video), plain(video))


def test_token_dropping_equals_full_encoder_on_visible_tokens(make_encoder, video, make_masks):
    torch.manual_seed(0)
    model = make_encoder()
    mask = make_masks(2, model.num_patches, 24)
    visible_idx = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :8]
    assert not mask.gather(1, visible_idx).any()
    dropped = model(video, visible_idx)
    # reference: the Conv3d on every tubelet, + position, then keep the visible tokens
    tokens = model.patch_embed(video) + model.pos_embed
    x = gather_tokens(tokens, visible_idx)
    for block in model.blocks:
        x = block(x)
    torch.testing.assert_close(dropped, model.norm(x), atol=1e-5, rtol=0)
    assert dropped.shape == (2, 8, 48)


def test_checkpointing_with_token_dropping_gradients(make_encoder, video, make_masks):
    torch.manual_seed(0)
    plain, ckpt = make_encoder(), make_encoder(act_checkpoint_every=1)
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.argsort(make_masks(2, plain.num_patches, 20).to(torch.int8), dim=1, stable=True)[:, :12]
    assert_same(forward_backward(plain, video, idx), forward_backward(ckpt, video, idx), atol=1e-6)


@pytest.mark.parametrize("impl,every", [("sdpa", 0), ("math", 0), ("sdpa", 1)])
def test_last_block_on_kept_tokens_equals_full_blocks_then_slice(make_encoder, impl, every):
    """keep_last: the final block computes only the last tokens; same values and gradients."""
    torch.manual_seed(0)
    blocks = make_encoder(layer_scale=0.5).blocks
    set_attention(blocks, impl)
    x = torch.randn(2, 12, 48, requires_grad=True)

    def run(keep_last):
        blocks.zero_grad(set_to_none=True)
        x.grad = None
        out = run_blocks(blocks, x, every, keep_last=keep_last)
        out = out if keep_last else out[:, -5:]
        (out.square().mean() + out.mean()).backward()
        return out.detach(), {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in blocks.named_parameters()}}

    kept, full = run(5), run(None)
    assert kept[0].shape == (2, 5, 48)
    assert_same(kept, full, atol=2e-6)


class AtenOps(TorchDispatchMode):
    """Names of the aten ops run while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_packed_axis_split_equals_timm_attention_with_one_copy_fewer_in_backward(impl):
    """VideoAttention vs timm's Attention with the same weights: identical outputs and gradients,
    and its backward moves the q/k/v gradients once (one stack), where timm's stacks and then copies."""
    torch.manual_seed(0)
    ours = VideoAttention(48, num_heads=4, qkv_bias=True)
    timm_attn = Attention(48, num_heads=4, qkv_bias=True)
    timm_attn.load_state_dict(ours.state_dict())
    for module in (ours, timm_attn):
        module.fused_attn = impl == "sdpa"
    x = torch.randn(2, 12, 48)

    def run(module):
        inp = x.clone().requires_grad_()
        out = module(inp)
        ops = AtenOps()
        with ops:
            (out.square().mean() + out.mean()).backward()
        data_moves = [n for n in ops.names if n in ("cat", "stack", "clone", "copy_")]
        return out.detach(), inp.grad, {n: p.grad for n, p in module.named_parameters()}, data_moves

    out_a, gx_a, grads_a, moves_a = run(ours)
    out_b, gx_b, grads_b, moves_b = run(timm_attn)
    assert torch.equal(out_a, out_b) and torch.equal(gx_a, gx_b)
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_b)
    assert len(moves_a) == len(moves_b) - 1, (moves_a, moves_b)


def test_layer_scale_and_qkv_bias_options(make_encoder, video):
    model = make_encoder(layer_scale=1e-6, qkv_bias=False)
    names = dict(model.named_parameters())
    assert "blocks.0.ls1.gamma" in names and torch.all(names["blocks.2.ls2.gamma"] == 1e-6)
    assert "blocks.0.attn.qkv.bias" not in names
    with torch.no_grad():  # residual branches scaled to ~0: the output is the normed embedding
        expected = model.norm(model.patch_embed(video) + model.pos_embed)
        torch.testing.assert_close(model(video), expected, atol=1e-4, rtol=0)
    assert "blocks.0.ls1.gamma" not in dict(make_encoder().named_parameters())


def test_drop_path_is_random_in_training_only(make_encoder, video):
    torch.manual_seed(0)
    model = make_encoder(drop_path=0.5)
    rates = [block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0 for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    with torch.no_grad():
        assert not torch.allclose(model(video), model(video))
        model.eval()
        torch.testing.assert_close(model(video), model(video))


def test_flat_sincos_matches_videomae_table():
    ours = pe.sincos_flat(1568, 768)
    theirs = get_sinusoid_encoding_table(1568, 768)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_3d_sincos_is_separable_by_axis():
    grid, dim = (4, 3, 5), 96
    table = pe.sincos_3d(grid, dim).reshape(*grid, dim)
    temporal = dim - 2 * 32
    # the temporal block varies only with t, the first spatial block only with h
    assert torch.allclose(table[:, 0, 0, :temporal], table[:, 2, 4, :temporal])
    assert not torch.allclose(table[0, :, 0, :temporal], table[1, :, 0, :temporal])
    assert torch.allclose(table[0, :, 1, temporal:temporal + 32], table[3, :, 4, temporal:temporal + 32])
    flat = table.reshape(-1, dim)
    assert torch.cdist(flat, flat).add(torch.eye(60) * 10).min() > 0.1  # every position distinct


def test_fixed_table_follows_the_input_grid(make_encoder):
    model = make_encoder(pos_embed="sincos")
    video = torch.randn(1, 3, 8, 48, 48)
    assert model.grid_of(video) == (4, 6, 6)
    torch.testing.assert_close(model.pos_embed_for((4, 6, 6)), pe.sincos_3d((4, 6, 6), 48))
    assert model(video).shape == (1, 144, 48)


def test_learned_table_is_resampled_and_trained_at_another_grid(make_encoder):
    model = make_encoder(pos_embed="learned")
    assert model.no_weight_decay() == {"pos_embed"}
    out = model(torch.randn(1, 3, 8, 48, 48))
    out.mean().backward()
    assert out.shape == (1, 144, 48) and model.pos_embed.grad.abs().sum() > 0
    constant = torch.full((1, 32, 48), 0.25)
    torch.testing.assert_close(pe.resample(constant, (2, 4, 4), (3, 7, 7)), torch.full((1, 147, 48), 0.25))
    ramp = torch.arange(2.0).repeat_interleave(16)[None, :, None].expand(1, 32, 4)  # t = 0, 1
    upsampled = pe.resample(ramp, (2, 4, 4), (4, 4, 4)).reshape(4, 16, 4)
    assert upsampled[0].max() <= upsampled[-1].min()  # order along time is kept


def test_infer_grid_and_its_ambiguity():
    assert pe.infer_grid(4 * 14 * 14, (8, 14, 14)) == (4, 14, 14)
    assert pe.infer_grid(8 * 16 * 16, (8, 14, 14)) == (8, 16, 16)
    with pytest.raises(ValueError, match="source_grid"):
        pe.infer_grid(1000, (8, 14, 14))


def test_layer_decay_groups_from_timm(make_encoder):
    model = make_encoder()
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == 1 + 3  # stem, 3 blocks (timm puts the final norm with the last block)
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** 3)


def test_full_size_shapes_on_meta_device():
    with torch.device("meta"):
        model = VideoViT(resolve_size("l"))
        tokens = model(torch.empty(2, 3, 16, 224, 224), torch.zeros(2, 157, dtype=torch.long))
    assert model.grid == (8, 14, 14) and model.num_patches == 1568
    assert tokens.shape == (2, 157, 1024)


def test_errors_name_the_problem(make_encoder):
    model = make_encoder()
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="not divisible into 2x8x8"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="model.tubelet"):
        make_encoder(tubelet=3)
    with pytest.raises(ValueError, match="model.pos_embed"):
        make_encoder(pos_embed="rope")
    with pytest.raises(ValueError, match="model.size 'xl'.*choose one of"):
        resolve_size("xl")
    with pytest.raises(ValueError, match="not divisible by model.num_heads"):
        resolve_size("b", num_heads=7)
    with pytest.raises(ValueError, match="model.drop_path"):
        make_encoder(drop_path=1.5)


def test_compiled_blocks_keep_keys_and_results(make_encoder, video):
    """torch.compile of the blocks (here with the quick aot_eager backend), checkpointing on."""
    torch.manual_seed(0)
    plain = make_encoder(act_checkpoint_every=1)
    compiled = make_encoder(act_checkpoint_every=1, compile_blocks={"backend": "aot_eager"})
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no `_orig_mod.` in the keys
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    assert_same(forward_backward(plain, video), forward_backward(compiled, video), atol=1e-5)

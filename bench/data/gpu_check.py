"""Device-side data code on a CUDA GPU: the same properties as the CPU tests, plus a timing of the
per-batch work the trainer does on the GPU (normalise + masks; classify: + erasing + mixup).

    python bench/data/gpu_check.py            # exits 1 if a check fails

DALI mixed (NVDEC) needs nvidia-dali on the GPU machine; when it is absent that is said, not faked.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ppma_scale.data.masking import make_masks  # noqa: E402
from ppma_scale.data.transforms import BatchAugment, normalize_video, render_views  # noqa: E402

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def timed(fn, repeat: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(0), torch.__version__)
    gen = torch.Generator(device=dev).manual_seed(0)
    grid = (8, 14, 14)
    for kind in ("random", "tube"):
        mask, dec = make_masks(kind, 64, grid, 0.9, 0.5, generator=gen, device=dev)
        n_mask = round(1568 * 0.9) if kind == "random" else 8 * round(196 * 0.9)
        check(f"{kind} mask on cuda: exact count", mask.is_cuda and bool((mask.sum(1) == n_mask).all()))
        check(f"{kind} decoder mask on cuda: subset, equal counts",
              not bool((dec & ~mask).any()) and bool((dec.sum(1) == dec.sum(1)[0]).all()))
        if kind == "tube":
            frames = mask.view(64, 8, 196)
            check("tube mask on cuda: constant over time", bool((frames == frames[:, :1]).all()))
    video = torch.randint(0, 256, (32, 3, 16, 224, 224), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    on_gpu = normalize_video(video.to(dev), mean, std)
    check("normalize_video cuda == cpu", torch.allclose(on_gpu.cpu(), normalize_video(video, mean, std), atol=1e-5))
    frames = torch.randint(0, 256, (16, 320, 568, 3), dtype=torch.uint8)
    views = [((10, 20, 280, 300), False), ((0, 100, 320, 320), True)]
    cpu_views = render_views(frames, views, 224)
    gpu_views = render_views(frames.to(dev), views, 224)
    diff = (gpu_views.cpu().float() - cpu_views.float()).abs()
    check("render_views cuda (float) ~ cpu (uint8 kernel)", gpu_views.shape == cpu_views.shape and
          diff.mean().item() < 1.0, f"mean |diff| {diff.mean().item():.3f}, max {diff.max().item():.0f}")
    aug = BatchAugment(150, mean, std, mixup=0.8, cutmix=1.0, label_smoothing=0.1, erase_prob=0.25)
    labels = torch.randint(0, 150, (32,), device=dev)
    x, target = aug(video.to(dev), labels)
    check("BatchAugment on cuda: soft targets", x.is_cuda and target.shape == (32, 150)
          and bool(torch.allclose(target.sum(1), torch.ones(32, device=dev))))
    gpu_video = video.to(dev)
    ms_norm = timed(lambda: normalize_video(gpu_video, mean, std, torch.bfloat16))
    ms_mask = timed(lambda: make_masks("random", 32, grid, 0.9, generator=gen, device=dev))
    ms_aug = timed(lambda: aug(gpu_video, labels))
    print(f"per batch of 32 clips 16x224: normalise (bf16) {ms_norm:.2f} ms, random masks {ms_mask:.2f} ms, "
          f"normalise+erase+mixup/cutmix {ms_aug:.2f} ms")
    try:
        import nvidia.dali  # noqa: F401
        print("nvidia-dali present: DALI mixed could be checked here")
    except ImportError:
        print("nvidia-dali is not installed on this machine: DALI mixed (NVDEC) not run")
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all device checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())

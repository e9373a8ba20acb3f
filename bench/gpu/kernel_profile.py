"""Reading a torch.profiler run of training steps: GPU time per kind of kernel, GPU-busy time, the
top kernels. Used by model_bench.py; imports only torch.

GPU events are counted once, from the device side: the CPU-side ops that launched them (aten::*,
compiled-kernel launchers) carry the same time and would count it twice, and CUPTI's overhead
records ("Command Buffer Full": a launch that waited for a full queue) are not GPU work.
"""
from __future__ import annotations

KERNEL_KINDS = (("fused (compiled)", ("triton_",)),  # first: their names carry the aten ops they fused
                ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
                ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
                ("optimizer", ("adam",)), ("layer_norm", ("layer_norm", "layernorm")),
                ("gather/sort", ("gather", "index", "scatter", "sort", "radix")),
                ("reduce", ("reduce",)), ("copy/elementwise", ("elementwise", "copy", "cat", "gelu", "fill")))


NOT_KERNELS = ("Command Buffer Full",)  # CUPTI overhead records (a stalled launch), not GPU work


def device_events(prof) -> list:
    """The profile's GPU-side events (kernels, copies, memsets), without CUPTI overhead records."""
    from torch.autograd import DeviceType
    return [e for e in prof.events() if e.device_type == DeviceType.CUDA and e.name not in NOT_KERNELS]


def work_items(prof, cuda: bool) -> list[tuple[str, float]]:
    """(name, microseconds) of each GPU event, or of each CPU op's self time on a CPU run. GPU events
    are counted once: the CPU-side ops that launched them (aten::*, compiled-kernel launchers) are not."""
    if cuda:
        return [(e.name, e.time_range.elapsed_us()) for e in device_events(prof)]
    return [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]


def busy_us(prof) -> float:
    """Microseconds in which at least one GPU event ran (the union of their intervals): the
    profiled window minus this is time the GPU sat idle."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in device_events(prof))
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarise(prof, cuda: bool, steps: int) -> dict:
    """ms per step by kind of kernel (or of CPU op on a CPU run), and on a GPU the busy ms per step."""
    kinds: dict[str, float] = {}
    for name, spent_us in work_items(prof, cuda):
        kind = next((k for k, marks in KERNEL_KINDS if any(m in name.lower() for m in marks)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + spent_us / 1e3 / steps
    out: dict = {"ms_per_step_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    if cuda:
        out["gpu_busy_ms_per_step"] = busy_us(prof) / 1e3 / steps
    return out


def top_table(prof, cuda: bool, rows: int = 30) -> str:
    """The profiler's own table of the most expensive ops and kernels."""
    events = prof.key_averages()
    attr = ("self_device_time_total" if hasattr(events[0], "self_device_time_total") else
            "self_cuda_time_total") if cuda else "self_cpu_time_total"
    return events.table(sort_by=attr, row_limit=rows, max_name_column_width=90)

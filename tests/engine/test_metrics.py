import json
import types

import pytest
import torch

from ppma_scale.engine import metrics as metrics_module
from ppma_scale.engine.metrics import (EVENTS_FILE, METRICS_FILE, MetricsLogger, ThroughputWindow, allocator_retries,
                                      format_record, peak_memory_gb)


def test_window_rates(monkeypatch):
    clock = {"now": 50.0}  # a fake clock: the rates are exact, however slow the machine
    monkeypatch.setattr(metrics_module, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"],
                                                                      time=lambda: 0.0))
    window = ThroughputWindow()
    clock["now"] += 2.0  # two seconds pass
    window.add_data_wait(0.5)
    window.add_step(10)
    window.add_step(10)
    out = window.summary(world_size=4, flops_per_clip=1e12, peak_tflops=20.0)
    assert out["clips_per_s"] == pytest.approx(20 * 4 / 2.0)
    assert out["step_time_s"] == pytest.approx(2.0 / 2)
    assert out["tflops_per_gpu"] == pytest.approx(20 * 1e12 / 2.0 / 1e12)
    assert out["mfu"] == pytest.approx(out["tflops_per_gpu"] / 20.0)
    assert out["data_wait"] == pytest.approx(0.25)
    assert "mfu" not in window.summary(world_size=1, flops_per_clip=1e12, peak_tflops=None)
    assert "tflops_per_gpu" not in window.summary(world_size=1, flops_per_clip=None, peak_tflops=20.0)
    window.reset()
    assert window.clips == 0 and window.steps == 0 and window.data_wait == 0.0
    clock["now"] += 4.0  # the next window is timed from the reset
    window.add_step(6)
    assert window.summary(world_size=1, flops_per_clip=None, peak_tflops=None)["clips_per_s"] == pytest.approx(1.5)


def test_logger_writes_on_main_only_and_truncates_on_resume(tmp_path, capsys):
    record = {"step": 1, "epoch": 0.1, "loss": 0.5, "lr": 1e-3, "grad_norm": 1.0, "clips_per_s": 3.0,
              "data_wait": 0.1, "peak_mem_gb": 1.0}
    other = MetricsLogger(tmp_path, is_main=False, total_steps=10)
    other.log(record)
    other.event("start", "hello")
    assert not (tmp_path / METRICS_FILE).exists() and not (tmp_path / EVENTS_FILE).exists()
    main = MetricsLogger(tmp_path, is_main=True, total_steps=10, tensorboard=True)
    for step in range(1, 6):
        main.log({**record, "step": step, "loss": float(step)})
    main.event("checkpoint", None, step=5)
    main.close()
    out = capsys.readouterr().out
    assert "step 5/10" in out and "loss 5.0000" in out
    assert [json.loads(l)["step"] for l in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / EVENTS_FILE).read_text())["event"] == "checkpoint"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    MetricsLogger(tmp_path, is_main=True, total_steps=10).keep_until(3)
    assert [json.loads(l)["step"] for l in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3]
    archive = tmp_path / "metrics.after-step_3.jsonl"  # the abandoned steps are kept aside, not deleted
    assert [json.loads(l)["loss"] for l in archive.read_text().splitlines()] == [4.0, 5.0]
    again = MetricsLogger(tmp_path, is_main=True, total_steps=10)
    again.log({**record, "step": 4, "loss": 40.0})
    again.close()
    MetricsLogger(tmp_path, is_main=True, total_steps=10).keep_until(3)  # rewound to step 3 a second time
    assert [json.loads(l)["loss"] for l in archive.read_text().splitlines()] == [4.0, 5.0, 40.0]
    assert "moved 1 later records of metrics.jsonl to metrics.after-step_3.jsonl" in capsys.readouterr().out


def test_format_and_memory():
    line = format_record({"step": 3, "epoch": 1.5, "loss": 0.25, "lr": 1e-4, "grad_norm": None, "clips_per_s": 9.5,
                          "tflops_per_gpu": 100.0, "mfu": 0.4, "data_wait": 0.05, "peak_mem_gb": 2.0,
                          "skipped_samples": 2}, total_steps=9, eta_s=3725)
    assert "MFU 40.0%" in line and "skipped 2" in line and "eta 1:02:05" in line and "gnorm" not in line
    assert "alloc retries" not in line
    pressed = format_record({"step": 3, "loss": None, "lr": 1e-4, "clips_per_s": 9.5, "data_wait": 0.0,
                             "peak_mem_gb": 70.0, "alloc_retries": 5, "alloc_retries_in_window": 2}, 9, None)
    assert "mem 70.0G alloc retries 2" in pressed  # this window's, not the run's
    assert allocator_retries(torch.device("cpu")) is None  # a CUDA allocator count only
    big = torch.ones(2**22)  # 16 MiB: the process's peak RSS is at least that
    assert 16 / 1024 < peak_memory_gb(torch.device("cpu")) < 64  # GiB, not KiB or bytes
    del big

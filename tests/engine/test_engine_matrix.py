"""The real trainer + DeepSpeed engine over ZeRO 0/1/2/3, fp32/bf16/fp16, CPU offload and accumulation, on one rank.

Every case poisons one optimizer step with a NaN loss: the step must be skipped in every
configuration (DeepSpeed's overflow check, or our guard for plain fp32) and leave the weights
bit-identical, which we check on the consolidated weights that `export` reads from each
checkpoint. A last case poisons steps in a row and must stop with a clear message.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from deepspeed.accelerator import get_accelerator

WORKER = Path(__file__).parent / "helpers" / "engine_worker.py"
CASES = [
    {"name": "z0_fp32", "train": {"zero_stage": 0, "precision": "fp32"}},
    {"name": "z0_bf16", "train": {"zero_stage": 0, "precision": "bf16"}},
    {"name": "z1_bf16_accum2", "train": {"zero_stage": 1, "precision": "bf16", "grad_accum": 2}},
    {"name": "z2_fp32", "train": {"zero_stage": 2, "precision": "fp32"}},
    {"name": "z2_fp16", "train": {"zero_stage": 2, "precision": "fp16"}},  # dynamic loss scaling
    {"name": "z2_bf16_offload", "train": {"zero_stage": 2, "precision": "bf16", "offload": "cpu"}},
    {"name": "z3_bf16", "train": {"zero_stage": 3, "precision": "bf16"}},
    {"name": "z3_fp32_accum2", "train": {"zero_stage": 3, "precision": "fp32", "grad_accum": 2}},
]
FP16_ON_THIS_CPU = bool(get_accelerator().is_fp16_supported())  # DeepSpeed's CPU fp16 needs AVX-512 FP16
POISONED = 2  # ctx.step of the poisoned step: the step that brings the count from 2 to 3
STOP_CASE = {"name": "stop", "train": {"zero_stage": 2, "precision": "bf16", "max_nonfinite": 3, "max_steps": 8},
             "poison": [1, 2, 3, 4, 5]}
# Resuming with another ZeRO stage goes through a universal checkpoint (stages 0-2); ZeRO-3 is refused clearly.
RESTAGE_CASES = [
    {"name": "z2_to_z1", "resume_from": "z2_fp32", "train": {"zero_stage": 1, "precision": "fp32", "max_steps": 6}},
    {"name": "z2_to_z3", "resume_from": "z2_fp32", "train": {"zero_stage": 3, "precision": "fp32", "max_steps": 6}},
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_matrix")
    cases = [{**c, "train": {**c["train"], "max_steps": 4, "ckpt_every": 1}, "poison": [POISONED]} for c in CASES]
    done = subprocess.run([sys.executable, str(WORKER), str(out), json.dumps(cases + [STOP_CASE] + RESTAGE_CASES)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("case", [c["name"] for c in CASES])
def test_poisoned_step_is_skipped_and_training_goes_on(matrix, case):
    outcome = json.loads((matrix / f"{case}.json").read_text())
    if case == "z2_fp16" and not FP16_ON_THIS_CPU:  # an AVX2-only CPU: refused by name, before any work
        assert outcome["error"] == ("ConfigError: train.precision=fp16: DeepSpeed cannot train in fp16 on this CPU "
                                    "(it needs AVX-512 FP16); use bf16 or fp32 here, or run on GPUs")
        assert not (matrix / case / "checkpoints").exists()
        return
    assert outcome["error"] is None and outcome["step"] == 4
    sums = outcome["weight_sums"]
    assert sorted(sums) == ["1", "2", "3", "4"]  # a checkpoint per step, all exportable
    assert sums["2"] == sums["3"]  # the skipped step changed no weight
    assert sums["3"] != sums["4"] and sums["1"] != sums["2"]  # real steps do
    events = read_jsonl(matrix / case / "events.jsonl")
    skipped = [e for e in events if e["event"] == "nonfinite"]
    assert [(e["step"], e["what"]) for e in skipped] == [(3, "loss")]
    metrics = read_jsonl(matrix / case / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[2]["loss"] is None and metrics[2]["skipped_steps"] == 1
    assert all(m["loss"] > 0 and m["grad_norm"] > 0 for m in metrics if m["step"] != 3)
    assert all(m["visible_share"] == pytest.approx(0.5) for m in metrics if m["step"] != 3)  # the task's extra
    # the schedule's lr really reached the optimizer DeepSpeed wraps (last step's lr, no layer decay)
    assert outcome["group_lrs"] and all(lr == pytest.approx(metrics[-1]["lr"]) for lr in outcome["group_lrs"])


def test_resume_with_another_zero_stage(matrix):
    outcome = json.loads((matrix / "z2_to_z1.json").read_text())
    assert outcome["error"] is None and outcome["step"] == 6
    events = read_jsonl(matrix / "z2_to_z1" / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [4]
    (change,) = [e for e in events if e["event"] == "config_change"]  # zero_stage 2 -> 1, max_steps 4 -> 6
    assert change["config_file"] == "config.yaml"  # a new run holds the new config in its own config.yaml
    assert not list((matrix / "z2_to_z1").glob("config.resume-*"))
    # converted into the resuming run's folder: the run it started from is only read
    assert (matrix / "z2_to_z1" / "universal" / "step_00000004" / "ppma_complete.json").is_file()
    assert not (matrix / "z2_fp32" / "checkpoints" / "step_00000004" / "universal").exists()
    refused = json.loads((matrix / "z2_to_z3.json").read_text())
    assert "saved with ZeRO-2; resuming it with train.zero_stage=3 is not supported" in refused["error"]
    assert not (matrix / "z2_to_z3").exists()  # refused before anything was written


def test_consecutive_nonfinite_steps_stop_the_run(matrix):
    outcome = json.loads((matrix / "stop.json").read_text())
    assert "3 optimizer steps in a row had a non-finite loss" in outcome["error"]
    assert "train.max_nonfinite=3" in outcome["error"]
    events = read_jsonl(matrix / "stop" / "events.jsonl")
    assert [e["in_a_row"] for e in events if e["event"] == "nonfinite"] == [1, 2, 3]
    assert not any(e["event"] == "end" for e in events)


@pytest.mark.parametrize("case, dtype", [("z0_fp32", "fp32"), ("z3_bf16", "bf16"), ("z2_bf16_offload", "fp32"),
                                         ("z0_bf16", "fp32"), ("z1_bf16_accum2", "fp32"), ("z2_fp32", "fp32"),
                                         ("z2_fp16", "fp32"), ("z3_fp32_accum2", "fp32")])
def test_export_writes_safetensors_the_models_load(matrix, case, dtype, tmp_path):
    import torch
    from safetensors import safe_open

    from ppma_scale.models.convert import load_trunk_weights, load_weights_file, to_trunk_state_dict
    sys.path.insert(0, str(WORKER.parent))
    from toy_task import toy_config

    from ppma_scale.models import build_encoder

    done = subprocess.run([sys.executable, "-m", "ppma_scale.export", str(matrix / case), "--dtype", dtype],
                          capture_output=True, text=True, timeout=120)
    if case == "z2_fp16" and not FP16_ON_THIS_CPU:  # the run was refused (above): nothing to export, said so
        assert done.returncode == 2 and "no such file or directory" in done.stderr, done.stderr[-3000:]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path == matrix / case / "export" / "step_00000004.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        assert meta["step"] == "4" and meta["dtype"] == dtype and "zero_stage" not in meta
        assert "encoder:" not in meta["config"] and "model:" in meta["config"]
    state = load_weights_file(path)
    assert {t.dtype for t in state.values()} == {torch.float32 if dtype == "fp32" else torch.bfloat16}
    live = torch.load(matrix / f"{case}_live.pt", weights_only=True)  # the engine's master weights when the run ended
    assert set(live) <= set(state)  # plus buffers (fixed position tables)
    for key, value in live.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    trunk, layout = to_trunk_state_dict(state)
    cfg = toy_config()
    encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.img_size)
    report = load_trunk_weights(encoder, trunk, layout)
    assert report["loaded"] > 10 and not report["filled"]


def test_export_keeps_an_earlier_export_unless_told_to_replace_it(matrix, tmp_path):
    out = tmp_path / "exported.safetensors"
    out.write_bytes(b"an export the user already has")
    command = [sys.executable, "-m", "ppma_scale.export", str(matrix / "z0_fp32"), "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{out} already exists" in done.stderr, done.stderr[-3000:]
    assert out.read_bytes() == b"an export the user already has"
    done = subprocess.run(command + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.read_bytes() != b"an export the user already has", done.stderr[-3000:]


def test_export_never_writes_into_the_checkpoints_it_reads(matrix):
    model_states = matrix / "z0_fp32" / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt"
    before = model_states.read_bytes()
    done = subprocess.run([sys.executable, "-m", "ppma_scale.export", str(matrix / "z0_fp32"), "--output",
                           str(model_states), "--overwrite"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is inside" in done.stderr and "the checkpoints being exported" in done.stderr
    assert model_states.read_bytes() == before


def test_export_errors_are_clear(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ppma_scale.export", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "no complete checkpoint" in done.stderr


class _Payload:
    """Pickled, it calls Path.touch on load: what a doctored checkpoint file could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_export_does_not_unpickle_code_in_a_checkpoint(tmp_path):
    """DeepSpeed's merge loads partitions with weights_only=False; export must not run what they pickle."""
    import torch
    marker = tmp_path / "code_ran"
    tag = tmp_path / "run" / "checkpoints" / "step_00000001"
    tag.mkdir(parents=True)
    for name in ("rank_00000.pt", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"module": {"w": torch.zeros(1)}, "x": _Payload(marker)}, tag / name)
    (tag / "ppma_complete.json").write_text(json.dumps({"step": 1, "world_size": 1, "zero_stage": 1}))
    done = subprocess.run([sys.executable, "-m", "ppma_scale.export", str(tmp_path / "run"), "--output",
                           str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "which export does not unpickle" in done.stderr, done.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()

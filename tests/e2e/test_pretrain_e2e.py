"""Stage 1 end to end through the real launchers: shards -> decode -> MAE -> DeepSpeed ZeRO-2 on 2 CPU ranks.

One uninterrupted run is the reference. A second run has rank 1 SIGKILLed in the middle of saving
step 6, is restarted with the same command, and must resume at step 4 and then log exactly the
reference's losses. A third run (under torchrun) gets SIGTERM on one rank, must save and exit 0,
and is then continued on a single plain process (2 -> 1 ranks, DeepSpeed universal checkpoint).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from ppma_scale.engine.dist import DS_SHM_PREFIX, SHM_DIR, deepspeed_cpu_allreduce_buffer, resolve_launch_env

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo" / "pretrain_test.yaml"
SCRIPT = REPO / "launch" / "pretrain.py"
BIN = Path(sys.executable).parent


def free_port() -> str:
    return resolve_launch_env({})["MASTER_PORT"]


def deepspeed_cmd(*args: str, port: str | None = None) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port or free_port(), str(SCRIPT), *args]


def torchrun_cmd(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port(), str(SCRIPT), *args]


def plain_cmd(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


def common_args(run_dir: Path, manifest: Path, *overrides: str) -> list[str]:
    return ["--config", str(CONFIG), "--output", str(run_dir), f"data.train={manifest}", *overrides]


def child_env(env_extra: dict | None = None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}


def run(cmd: list[str], env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(env_extra), cwd=REPO)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}


def latest_tag(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def nohuman(tiny_shards) -> Path:
    return tiny_shards["nohuman"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, nohuman) -> Path:
    run_dir = tmp_path_factory.mktemp("e2e") / "reference"
    port, log = free_port(), run_dir.parent / "reference.log"
    seen: set[str] = set()  # DeepSpeed's shared-memory segments of this run, watched while it runs
    with open(log, "w") as out:
        proc = subprocess.Popen(deepspeed_cmd(*common_args(run_dir, nohuman), port=port), stdout=out,
                                stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(p.name for p in SHM_DIR.glob(f"{DS_SHM_PREFIX}*_{port}_*"))
            time.sleep(0.2)
        if proc.poll() is None:  # past the deadline
            proc.kill()
    assert proc.wait() == 0, log.read_text()[-8000:]
    REFERENCE_SHM.update(port=port, seen=seen)
    return run_dir


REFERENCE_SHM: dict = {}


def test_a_cpu_run_leaves_no_deepspeed_shared_memory_behind(reference):
    """DeepSpeed's CPU all-reduce maps a /dev/shm segment per rank and never removes it; our
    shutdown does, or every CPU run would keep ~140 MB of RAM until the machine runs out."""
    port = REFERENCE_SHM["port"]
    expected = {deepspeed_cpu_allreduce_buffer(rank, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}).name
                for rank in (0, 1)}
    assert REFERENCE_SHM["seen"] == expected  # the run made exactly the segments we remove ...
    assert not list(SHM_DIR.glob(f"{DS_SHM_PREFIX}*_{port}_*"))  # ... and none is left


def test_config_error_stops_before_any_work(tmp_path, nohuman):
    run_dir = tmp_path / "never"
    done = run(plain_cmd(*common_args(run_dir, nohuman, "train.mirco_batch=4")))
    assert done.returncode == 2
    assert "unknown key 'train.mirco_batch'" in done.stderr and "did you mean 'train.micro_batch'" in done.stderr
    assert not run_dir.exists()
    done = run(plain_cmd(*common_args(run_dir, tmp_path / "missing.json")))
    assert done.returncode == 2 and "missing.json does not exist" in done.stderr
    done = run(plain_cmd(*common_args(run_dir, nohuman, "train.zero_stage=0", "train.offload=cpu")))
    assert done.returncode == 2 and "needs ZeRO" in done.stderr
    assert not run_dir.exists()
    done = run(plain_cmd(*common_args(run_dir, nohuman, "train.micro_batch=32")))  # before DeepSpeed starts
    assert done.returncode == 2 and "holds 16 videos, fewer than one global batch (1 rank(s) x " \
        "train.micro_batch 32)" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()


def test_reference_run_writes_a_complete_run_directory(reference, nohuman):
    metrics = read_jsonl(reference / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for m in metrics:
        assert m["loss"] > 0 and m["grad_norm"] > 0 and m["clips_per_s"] > 0 and 0 <= m["data_wait"] <= 1
        assert m["peak_mem_gb"] > 0 and m["skipped_samples"] == 0 and "tflops_per_gpu" in m
    assert metrics[0]["lr"] < metrics[2]["lr"]  # warmup, then cosine down
    assert metrics[-1]["lr"] < metrics[2]["lr"]
    resolved = (reference / "config.yaml").read_text()
    assert "zero_stage: 2" in resolved and "manifest.json" in resolved and str(reference) in resolved
    ds_config = json.loads((reference / "ds_config.json").read_text())
    assert ds_config["train_batch_size"] == 2 * 2 and ds_config["zero_optimization"]["stage"] == 2
    tags = sorted(p.name for p in (reference / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step_00000006", "step_00000008"]  # keep_last: 2
    assert latest_tag(reference) == "step_00000008"
    marker = json.loads((reference / "checkpoints" / "step_00000008" / "ppma_complete.json").read_text())
    assert marker["world_size"] == 2 and marker["zero_stage"] == 2 and marker["step"] == 8
    # the epoch of step 7 too: whether step 8 finished an epoch stays this run's verdict on other ranks
    steps_per_epoch = 1 / (marker["epoch"] - marker["epoch_before"])
    assert marker["epoch"] == pytest.approx(8 / steps_per_epoch) and steps_per_epoch > 1
    from ppma_scale.data.shards import open_sources
    assert marker["data_layouts"] == [d.layout for d in open_sources([nohuman])[0]]  # what a resume checks its shards against
    from ppma_scale.engine.checkpoint import file_checksum
    tag_dir = reference / "checkpoints" / "step_00000008"
    saved = sorted(p.name for p in tag_dir.glob("*.pt"))  # rank 0's and rank 1's files, each summed by its writer
    assert sorted(marker["checksums"]) == saved and len(saved) == 5
    assert all(marker["checksums"][name] == file_checksum(tag_dir / name) for name in saved)
    assert [e["event"] for e in read_jsonl(reference / "events.jsonl")][-1] == "end"


def listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_a_dry_run_plans_what_the_run_does_and_writes_nothing(reference, nohuman, tmp_path, capsys):
    """`--dry-run --world-size N` (plain python, a login node): the checks of a launch, then the plan.
    Its steps per epoch and run length are those the 2-rank reference run logged at its start; on its
    run directory it names the resume point and leaves every file as it was."""
    import re
    start = [e for e in read_jsonl(reference / "events.jsonl") if e["event"] == "start"][0]
    logged_per_epoch = round(start["steps_per_epoch"], 4)
    new = tmp_path / "new"
    fresh = run(plain_cmd(*common_args(new, nohuman), "--dry-run", "--world-size", "2"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "every check passed; nothing was started or written" in fresh.stdout
    assert f"resume:   none: a new run in {new}" in fresh.stdout
    planned = float(re.search(r"schedule: ([\d.,]+) steps per epoch", fresh.stdout).group(1).replace(",", ""))
    assert planned == pytest.approx(logged_per_epoch) and f"= {start['total_steps']} steps" in fresh.stdout
    assert "2 rank(s) x train.micro_batch 2 x train.grad_accum 1 = 4 videos per step" in fresh.stdout
    assert re.search(r"compute: +[\d.e+-]+ TFLOP per clip", fresh.stdout) and "GPU-hours" in fresh.stdout
    assert not new.exists()

    # the accounting of optimizer state per rank against what DeepSpeed saved of it: its fp32 partition
    # (cloned even from fp32 weights under ZeRO-2) and both Adam moments
    from ppma_scale.config import load_config
    from ppma_scale.engine.dry_run import model_state_bytes
    from ppma_scale.engine.tasks import build_task
    cfg = load_config(CONFIG, [f"data.train={nohuman}"])
    with torch.device("meta"):
        params = sum(p.numel() for p in build_task(cfg).architecture().parameters())
    planned = model_state_bytes(params, params, cfg.train.precision, cfg.train.zero_stage, 2).optimizer
    for rank in range(2):
        saved = (reference / "checkpoints" / "step_00000008" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        assert planned <= saved.stat().st_size <= planned * 1.05 + 64 * 1024, (planned, saved.stat().st_size)
    # activations: the count that tests/models/test_activations.py checks against autograd, for the
    # forward batch this run had (2 clips a rank, fp32: this config's precision)
    from ppma_scale.engine.dry_run import _gib
    task = build_task(cfg)
    with torch.device("meta"):
        per_clip = task.activation_bytes(task.architecture()).saved
    assert f"activations about {_gib(2 * per_clip)} per GPU (2 clips a forward, {_gib(per_clip)} each)" in fresh.stdout

    before = listing(reference)
    resumed = run(plain_cmd(*common_args(reference, nohuman, "train.max_steps=12"), "--dry-run", "--world-size", "4"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"resume:   from {reference / 'checkpoints' / 'step_00000008'} (step 8, saved on 2 ranks)"
            in resumed.stdout)
    assert "config change: train.max_steps: 8 -> 12" in resumed.stdout and "= 12 steps, 4 left" in resumed.stdout
    assert listing(reference) == before  # the checkpoint files were opened (deep check), nothing written

    from ppma_scale.cli import launch  # the refusals in-process (what launch/pretrain.py calls)
    assert launch([*common_args(new, nohuman), "--dry-run", "--world-size", "64"], stage="pretrain",
                  tasks=("mae",)) == 2
    assert "fewer than one global batch (64 rank(s) x train.micro_batch 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        launch([*common_args(new, nohuman), "--world-size", "4"], stage="pretrain", tasks=("mae",))
    assert usage.value.code == 2 and "--world-size plans a --dry-run" in capsys.readouterr().err
    assert not new.exists()


def test_resume_off_refuses_to_overwrite_a_run(reference, nohuman):
    before = (reference / "metrics.jsonl").read_text()
    done = run(plain_cmd(*common_args(reference, nohuman), "--resume", "off"))
    assert done.returncode == 2 and "already holds checkpoints (latest: step 8)" in done.stderr
    assert (reference / "metrics.jsonl").read_text() == before


def test_resume_refuses_another_runs_checkpoint_and_a_changed_recipe(reference, nohuman, tmp_path):
    """`--resume PATH` into a run that has checkpoints of its own, or with run-defining keys changed,
    stops before anything is written; --allow-config-change (launcher flag) lets a recipe change through."""
    import shutil
    victim = tmp_path / "victim"
    shutil.copytree(reference, victim)
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    done = run(plain_cmd(*common_args(victim, nohuman), "--resume", str(reference / "checkpoints" / "step_00000006")))
    assert done.returncode == 2 and "is a checkpoint of another run" in done.stderr, done.stderr[-3000:]
    done = run(plain_cmd(*common_args(victim, nohuman, "optim.lr=0.01", "train.micro_batch=4")))
    assert done.returncode == 2 and "these keys define the run" in done.stderr
    assert "optim.lr: 0.001 -> 0.01" in done.stderr and "train.micro_batch: 2 -> 4" in done.stderr
    done = run(plain_cmd(*common_args(victim, nohuman, "optim.lr=0.01", "train.max_steps=5"), "--allow-config-change"))
    assert done.returncode == 2 and "already past the end of this run (train.max_steps=5)" in done.stderr
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before


def test_export_of_a_two_rank_zero2_run(reference):
    from ppma_scale.export import export_checkpoint
    from ppma_scale.models.convert import load_weights_file, to_trunk_state_dict
    path = export_checkpoint(reference)
    state = load_weights_file(path)
    trunk, layout = to_trunk_state_dict(state)
    assert any(k.startswith("decoder") for k in state) and "blocks.0.attn.qkv.weight" in trunk


def test_compiled_blocks_train_like_the_reference_and_every_rank_exits(tmp_path, nohuman, reference):
    """`model.compile` inside the DeepSpeed engine (ZeRO-2, 2 ranks, torch.compile's CPU backend):
    the same losses as the uncompiled reference up to float reordering, and both ranks exit (they
    used to wait forever after the last step for torch.compile's idle worker thread)."""
    run_dir = tmp_path / "compiled"
    done = run(deepspeed_cmd(*common_args(run_dir, nohuman, "model.compile=true")), timeout=480)
    assert done.returncode == 0, done.stderr[-5000:]
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    assert got == pytest.approx(want, rel=1e-3)
    assert "recompile_limit" not in done.stderr  # every block ran compiled, none fell back


def test_a_resume_with_drop_path_draws_the_same_masks(tmp_path, nohuman):
    """Drop path draws from the global RNG, which a resume restores. Starting the resumed run's
    DataLoader drew one number from it too (its workers' base seed), so every later mask differed."""
    recipe = ("model.drop_path=0.3",)
    straight = tmp_path / "straight"
    assert run(deepspeed_cmd(*common_args(straight, nohuman, *recipe))).returncode == 0
    run_dir = tmp_path / "killed"
    cmd = deepspeed_cmd(*common_args(run_dir, nohuman, *recipe))
    assert run(cmd, {"PPMA_FAULT_KILL_IN_SAVE": "6:1"}).returncode != 0
    resumed = run(cmd)
    assert resumed.returncode == 0 and "step_00000004 at step 4" in resumed.stdout, resumed.stderr[-5000:]
    assert losses(run_dir) == losses(straight)


def test_killed_save_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path, nohuman, reference):
    run_dir = tmp_path / "killed"
    cmd = deepspeed_cmd(*common_args(run_dir, nohuman))
    died = run(cmd, {"PPMA_FAULT_KILL_IN_SAVE": "6:1"})  # rank 1 dies while saving step 6
    assert died.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert latest_tag(run_dir) == "step_00000004"
    assert (ckpts / "step_00000006").is_dir() and not (ckpts / "step_00000006" / "ppma_complete.json").exists()
    assert max(losses(run_dir)) >= 6  # it had trained past step 4 before dying

    resumed = run(cmd)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stdout and "step_00000004 at step 4" in resumed.stdout
    assert "config changed" not in resumed.stdout + resumed.stderr  # --output is the run's directory, not a change
    assert not list(run_dir.glob("config.resume-*.yaml"))
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [4]
    assert losses(run_dir) == losses(reference)  # step for step, bit for bit
    assert (ckpts / "step_00000006" / "ppma_complete.json").is_file() and latest_tag(run_dir) == "step_00000008"


def rank_processes(launcher: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(launcher.pid).children()  # the ranks, not their data-loader workers
    return [p for p in children if str(SCRIPT) in " ".join(p.cmdline())]


def test_sigterm_saves_and_exits_zero_then_resumes_on_one_rank(tmp_path, nohuman):
    run_dir = tmp_path / "preempted"
    cmd = torchrun_cmd(*common_args(run_dir, nohuman, "train.max_steps=400", "train.ckpt_every=0"))
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    ranks = rank_processes(launcher)
    assert len(ranks) == 2, "expected two rank processes under torchrun"
    ranks[-1].send_signal(signal.SIGTERM)  # one rank only: the other learns through the all-reduce
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, output[-5000:]
    stop = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "stop"]
    assert len(stop) == 1 and stop[0]["signal"] == "SIGTERM"
    stopped_at = stop[0]["step"]
    assert 2 <= stopped_at < 400
    assert latest_tag(run_dir) == f"step_{stopped_at:08d}"  # saved at the step it stopped after

    stop_epoch = json.loads((run_dir / "checkpoints" / latest_tag(run_dir) / "ppma_complete.json").read_text())["epoch"]
    done = run(plain_cmd(*common_args(run_dir, nohuman, f"train.max_steps={stopped_at + 2}")))
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"at step {stopped_at} (saved on 2 ranks, now 1)" in done.stdout
    after = losses(run_dir)
    assert sorted(after)[-2:] == [stopped_at + 1, stopped_at + 2] and all(v > 0 for v in after.values())
    # the data epoch goes on from the checkpoint's; one rank (same micro-batch) covers half as much per step
    epoch = {r["step"]: r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")}
    per_step_two_ranks = epoch[stopped_at] - epoch[stopped_at - 1]
    assert epoch[stopped_at] == pytest.approx(stop_epoch, abs=1e-4)
    assert epoch[stopped_at + 1] - stop_epoch == pytest.approx(per_step_two_ranks / 2, abs=2e-4)
    assert epoch[stopped_at + 2] - epoch[stopped_at + 1] == pytest.approx(per_step_two_ranks / 2, abs=2e-4)
    marker = json.loads((run_dir / "checkpoints" / latest_tag(run_dir) / "ppma_complete.json").read_text())
    assert marker["world_size"] == 1 and marker["step"] == stopped_at + 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_whole_process_group_workers_included_saves(tmp_path, nohuman, sig):
    """SLURM's --signal=TERM, scancel, a launcher stopping its process tree and Ctrl-C reach the
    DataLoader workers too. They must leave the stop to their rank, which still needs them for the
    step it finishes before saving (a worker killed by the signal used to end the run unsaved)."""
    run_dir = tmp_path / "group_stop"
    proc = subprocess.Popen(plain_cmd(*common_args(run_dir, nohuman, "train.max_steps=400", "train.ckpt_every=0",
                                                   "data.num_workers=2")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=child_env(),
                            start_new_session=True)  # its own process group: the rank and its workers
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    assert len(psutil.Process(proc.pid).children()) == 2, "expected the rank's two data workers"
    os.killpg(proc.pid, sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-5000:]
    stop = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "stop"]
    assert len(stop) == 1 and stop[0]["signal"] == sig.name
    assert latest_tag(run_dir) == f"step_{stop[0]['step']:08d}"


# Start-up checks at scale: rank 0 checks once the process group exists, the other ranks do not repeat them.
COUNTING = REPO / "tests" / "helpers" / "counting_launch.py"


def counts(folder: Path) -> list[dict]:
    return [json.loads((folder / f"counts_{rank}.json").read_text()) for rank in range(2)]


def test_missing_shards_are_checked_by_rank_0_alone_and_stop_every_rank(tmp_path, nohuman,
                                                                       two_ranks_without_launcher):
    """Every rank stat-ing every shard is ranks x shards metadata requests per start on a shared filesystem."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(nohuman.parent, data)
    lost = sorted(data.glob("*.tar"))[1]
    lost.unlink()
    run_dir = tmp_path / "run"
    done = two_ranks_without_launcher([str(COUNTING), str(tmp_path), "pretrain", *common_args(run_dir, data / nohuman.name)])
    for rank, finished in enumerate(done):
        assert finished.returncode == 2, (rank, finished.stderr[-3000:])
        assert f"shards of manifest {data / nohuman.name} cannot be used (missing: {lost})" in finished.stderr, \
            finished.stderr[-3000:]
    rank0, rank1 = counts(tmp_path)
    assert rank0["shard_stats"] == len(list(data.glob("*.tar"))) + 1 and rank1["shard_stats"] == 0
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()  # nothing written


def flip_a_tensor_byte(path: Path) -> None:
    """Change one byte inside the largest tensor of a torch zip file: same size, same zip structure."""
    import zipfile
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    start = largest.header_offset
    name_len, extra_len = (int.from_bytes(data[start + at:start + at + 2], "little") for at in (26, 28))
    data[start + 30 + name_len + extra_len + largest.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_damaged_checkpoint_is_found_by_rank_0_alone_and_every_rank_falls_back(tmp_path, nohuman, reference,
                                                                                 two_ranks_without_launcher, damage):
    """The ranks only list the checkpoint's files before the process group exists; rank 0 then opens
    them, finds a file of step 8 damaged (rank 1's cut short, or rank 1's optimizer partition with a
    byte changed inside a tensor: only its checksum shows that), and every rank resumes from step 6."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    tag_dir = run_dir / "checkpoints" / "step_00000008"
    if damage == "cut":
        cut = tag_dir / "rank_00001.pt"
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    else:
        from ppma_scale.engine.checkpoint import _zip_problem
        flipped = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        flip_a_tensor_byte(flipped)
        assert _zip_problem(flipped) is None  # the structure is intact
    done = two_ranks_without_launcher([str(COUNTING), str(tmp_path), "pretrain", *common_args(run_dir, nohuman)])
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    if damage == "flip":
        assert f"{flipped}: contents changed since it was saved" in done[0].stdout + done[0].stderr
    rank0, rank1 = counts(tmp_path)
    assert rank0["zip_checks"] > 0 and rank1["zip_checks"] == 0
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"][-1] == 6
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_00000008")) == [
        "step_00000008", "step_00000008.damaged"]  # set aside, then saved again
    assert losses(run_dir) == losses(reference)


def test_a_resume_on_another_data_layout_is_worked_out_by_rank_0_alone(tmp_path, nohuman, reference,
                                                                       two_ranks_without_launcher):
    """With another worker count (likewise another world size) the data epoch continues over what no
    saved rank consumed. Rank 0 reads every saved rank's data state and works that out once; the other
    ranks are given it (each reading every saved rank's file is ranks x ranks opens at start-up)."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    done = two_ranks_without_launcher([str(COUNTING), str(tmp_path), "pretrain",
                                       *common_args(run_dir, nohuman, "data.num_workers=2", "train.max_steps=10")])
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    rank0, rank1 = counts(tmp_path)
    assert (rank0["data_state_files"], rank0["continue_plans"]) == (1 + 2, 1)  # its own file, then both
    assert (rank1["data_state_files"], rank1["continue_plans"]) == (1, 0)  # its own file only
    after = losses(run_dir)
    assert sorted(after)[-2:] == [9, 10] and all(after[step] == losses(reference)[step] for step in range(1, 9))
    marker = json.loads((run_dir / "checkpoints" / latest_tag(run_dir) / "ppma_complete.json").read_text())
    assert marker["step"] == 10
    states = [torch.load(run_dir / "checkpoints" / latest_tag(run_dir) / f"rank_{r:05d}.pt", weights_only=True)
              for r in range(2)]
    assert [s["stream"]["workers"] for s in states] == [2, 2] and [s["stream"]["rank"] for s in states] == [0, 1]


def test_a_data_state_the_stream_cannot_continue_is_one_line_on_every_rank(tmp_path, nohuman, reference,
                                                                           two_ranks_without_launcher):
    """--allow-config-change lets another run.seed through the config check, but the data cursor was
    saved for the old seed's order: every rank refuses with one line (exit 2), not a traceback."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    done = two_ranks_without_launcher([str(SCRIPT), *common_args(run_dir, nohuman, "run.seed=7", "train.max_steps=10"),
                                       "--allow-config-change"])
    for rank, finished in enumerate(done):
        assert finished.returncode == 2, (rank, finished.stderr[-3000:])
        assert "the data state was saved with seed" in finished.stderr and "Traceback" not in finished.stderr, \
            finished.stderr[-3000:]
    assert losses(run_dir) == losses(reference)  # nothing trained, nothing logged

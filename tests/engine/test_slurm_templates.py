"""launch/slurm/*.sbatch and the SLURM side of ppma_scale.engine.dist, without a SLURM cluster.

The templates run under bash as SLURM would run them (SLURM_* variables set, the repository root as
the working directory), with stand-ins for the scheduler's commands first on PATH: `srun` records its
arguments and environment and then exits, fails, or runs until it is signalled; `scontrol` answers
`show hostnames` and records `requeue`; `scancel` records its calls. No training runs here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppma_scale.engine.dist import rank_device, resolve_launch_env, slurm_job_port

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "launch" / "slurm"
TEMPLATES = ["pretrain_srun.sbatch", "pretrain_deepspeed.sbatch", "pretrain_torchrun.sbatch"]
JOB_ID = 4242424
CPUS = 7

FAKE_SRUN = r"""#!/bin/bash
# Stand-in for SLURM's srun. FAKE_SRUN: exit0 | fail (exit 3) | run (until SIGUSR1, then exit 0, as
# ranks that saved) | run_fail (until SIGUSR1, then exit 1, as a save that failed).
log=$FAKE_SLURM_LOG
printf '%s\n' "$@" > "$log/srun.argv"
printf '%s\n' "MASTER_ADDR=${MASTER_ADDR-}" "MASTER_PORT=${MASTER_PORT-}" > "$log/srun.env"
case $FAKE_SRUN in
  exit0) exit 0 ;;
  fail) exit 3 ;;
  run|run_fail)
    trap 'echo USR1 >> "$log/srun.signals"; [[ $FAKE_SRUN == run ]]; exit $?' USR1
    trap 'echo TERM >> "$log/srun.signals"; exit 143' TERM
    echo $$ > "$log/srun.started"
    for _ in $(seq 400); do sleep 0.05; done   # 20 s at most, should a test go wrong
    exit 99 ;;
esac
"""
FAKE_SCONTROL = r"""#!/bin/bash
# Stand-in for SLURM's scontrol: `show hostnames LIST` prints FAKE_NODES nodes (default 2), one write
# each; `requeue` exits FAKE_REQUEUE_RC.
echo "$*" >> "$FAKE_SLURM_LOG/scontrol.calls"
case $1 in
  show) echo node-a; for ((i = 1; i < ${FAKE_NODES:-2}; i++)); do echo "node-$i"; done ;;
  requeue) exit "${FAKE_REQUEUE_RC:-0}" ;;
esac
"""
FAKE_SCANCEL = r"""#!/bin/bash
echo "$*" >> "$FAKE_SLURM_LOG/scancel.calls"
"""


class Job:
    """One template run under the stand-ins: `start()`, then `finish()` -> exit status."""

    def __init__(self, tmp: Path, template: str, srun_mode: str, **env: str) -> None:
        self.log = tmp / "log"
        self.log.mkdir(parents=True)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "FAKE_SLURM_LOG": str(self.log),
            "FAKE_SRUN": srun_mode, "RUN_DIR": str(tmp / "run"),
            # what SLURM puts into a batch script's environment
            "SLURM_JOB_ID": str(JOB_ID), "SLURM_JOB_NAME": "ppma-test", "SLURM_JOB_NODELIST": "node-[a-b]",
            "SLURM_NNODES": "2", "SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": str(CPUS),
            **env,
        }
        self.argv = ["bash", str(SLURM_DIR / template), "configs/demo/pretrain_test.yaml", "train.max_steps=5"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Job":
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        return self

    def wait_for_srun(self) -> None:
        deadline = time.monotonic() + 15
        while not (self.log / "srun.started").exists():
            assert self.proc.poll() is None, f"the batch script ended early:\n{self.proc.stdout.read()}"
            assert time.monotonic() < deadline, "srun never started"
            time.sleep(0.02)
        time.sleep(0.1)  # the batch shell notes srun's pid right after starting it; let it have done so

    def finish(self) -> int:
        try:
            self.output, _ = self.proc.communicate(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode

    def read(self, name: str) -> str:
        path = self.log / name
        return path.read_text() if path.exists() else ""

    @property
    def srun_argv(self) -> list[str]:
        return self.read("srun.argv").splitlines()

    @property
    def requeued(self) -> list[str]:
        return [line for line in self.read("scontrol.calls").splitlines() if line.startswith("requeue")]


def _run_until_warning(tmp_path: Path, template: str, srun_mode: str = "run", **env: str) -> tuple[Job, int]:
    """Start the job, let srun start, send the batch shell the time-limit warning (B:USR1) as SLURM
    would, and let it end."""
    job = Job(tmp_path, template, srun_mode, **env).start()
    job.wait_for_srun()
    os.kill(job.proc.pid, signal.SIGUSR1)
    return job, job.finish()


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_parse(template):
    done = subprocess.run(["bash", "-n", str(SLURM_DIR / template)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_ask_for_the_warning_on_the_batch_shell_and_an_appended_log(template):
    directives = [line.split("#", 2)[1].split()[1] for line in (SLURM_DIR / template).read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--signal=B:USR1@600" in directives  # the script, not the step, gets it: it requeues
    assert "--open-mode=append" in directives  # a requeued job keeps the earlier attempt's log
    assert "--requeue" in directives


@pytest.mark.parametrize("template", TEMPLATES)
def test_time_limit_warning_is_forwarded_to_the_step_and_the_job_requeued(tmp_path, template):
    job, code = _run_until_warning(tmp_path, template)
    assert code == 0, job.output
    assert job.read("srun.signals").split() == ["USR1"]  # reached srun, which passes it on to every task
    assert job.requeued == [f"requeue {JOB_ID}"], job.output
    assert f"--cpus-per-task={CPUS}" in job.srun_argv


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("mode, code", [("exit0", 0), ("fail", 3)])  # finished by itself; failed (job fails)
def test_a_step_that_ends_without_the_warning_is_not_requeued(tmp_path, template, mode, code):
    job = Job(tmp_path, template, mode).start()
    assert job.finish() == code, job.output
    assert job.requeued == []
    assert f"--cpus-per-task={CPUS}" in job.srun_argv


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_step_that_fails_after_the_warning_is_not_requeued(tmp_path, template):
    job, code = _run_until_warning(tmp_path, template, "run_fail")
    assert code == 1, job.output
    assert job.read("srun.signals").split() == ["USR1"]
    assert job.requeued == []


def test_a_refused_requeue_fails_the_job(tmp_path):
    job, code = _run_until_warning(tmp_path, "pretrain_srun.sbatch", FAKE_REQUEUE_RC="1")
    assert job.requeued == [f"requeue {JOB_ID}"]
    assert code != 0 and "resubmit" in job.output


def _port_seen_by_the_step(job: Job, template: str) -> str:
    argv = job.srun_argv
    if template == "pretrain_srun.sbatch":  # exported to the ranks
        env = dict(line.split("=", 1) for line in job.read("srun.env").splitlines())
        assert env["MASTER_ADDR"] == "node-a"
        return env["MASTER_PORT"]
    if template == "pretrain_deepspeed.sbatch":  # bash -c SCRIPT _ HOSTFILE ADDR PORT ...
        underscore = argv.index("_")
        assert argv[underscore + 2] == "node-a"
        return argv[underscore + 3]
    addr, port = argv[argv.index("--rdzv_endpoint") + 1].split(":")
    assert addr == "node-a"
    return port


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_rendezvous_port_follows_the_job_id_unless_master_port_is_set(tmp_path, template):
    derived = Job(tmp_path / "derived", template, "exit0").start()
    assert derived.finish() == 0, derived.output
    assert _port_seen_by_the_step(derived, template) == str(20000 + JOB_ID % 12768) == str(slurm_job_port(JOB_ID))
    pinned = Job(tmp_path / "pinned", template, "exit0", MASTER_PORT="31337").start()
    assert pinned.finish() == 0, pinned.output
    assert _port_seen_by_the_step(pinned, template) == "31337"


def test_a_long_node_list_is_read_whole(tmp_path):
    """The first node is taken without a pipe into `head`, which under pipefail ended the script when
    scontrol was still writing (SIGPIPE); the DeepSpeed hostfile lists every node."""
    job = Job(tmp_path, "pretrain_deepspeed.sbatch", "exit0", FAKE_NODES="3000").start()
    assert job.finish() == 0, job.output
    hostfile = (tmp_path / "run" / f"hostfile.{JOB_ID}").read_text().splitlines()
    assert len(hostfile) == 3000 and hostfile[:2] == ["node-a slots=8", "node-1 slots=8"]
    assert job.srun_argv[job.srun_argv.index("_") + 2] == "node-a"


def test_job_ports_differ_between_neighbouring_jobs_and_stay_below_the_ephemeral_range():
    ports = {slurm_job_port(job) for job in range(1_000_000, 1_012_768)}
    assert len(ports) == 12768 and min(ports) == 20000 and max(ports) == 32767


@pytest.mark.parametrize("template,launcher", [("pretrain_deepspeed.sbatch", "deepspeed"),
                                               ("pretrain_torchrun.sbatch", "torchrun")])
def test_launcher_templates_start_their_launcher_with_the_stop_signal_ignored(tmp_path, template, launcher):
    job = Job(tmp_path, template, "exit0").start()
    assert job.finish() == 0, job.output
    argv = job.srun_argv
    script = "\n".join(argv[argv.index("-c") + 1:argv.index("_")])  # the task's `bash -c` script
    ignored = {"deepspeed": 'trap "" USR1 TERM', "torchrun": 'trap "" USR1'}[launcher]
    assert ignored in script
    assert script.index(ignored) < script.index(f"exec {launcher}")


RANK_PROGRAM = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *_: (out / "rank_caught").write_text("USR1"))  # as StopRequest does
(out / "rank_ready").write_text("")
for _ in range(200):
    if (out / "rank_caught").exists():
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
"""
LAUNCHER_PROGRAM = """
import os, signal, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / "launcher_usr1").write_text(str(signal.getsignal(signal.SIGUSR1)))
rank = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(out)])  # as the launchers start ranks
while not (out / "rank_ready").exists():
    time.sleep(0.02)
for pid in (os.getpid(), rank.pid):  # SLURM signals every process of the step
    os.kill(pid, signal.SIGUSR1)
sys.exit(rank.wait(timeout=10))
"""


def test_an_ignored_stop_signal_spares_the_launcher_and_still_reaches_a_rank_that_catches_it(tmp_path):
    """What the launcher templates rely on: `trap "" USR1` before exec is inherited by the launcher
    (which installs no SIGUSR1 handler: its default action would kill it) and by the ranks it starts,
    and a rank's own handler still receives the signal."""
    done = subprocess.run(["bash", "-c", 'trap "" USR1; exec "$@"', "_", sys.executable, "-c", LAUNCHER_PROGRAM,
                           str(tmp_path), RANK_PROGRAM], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "launcher_usr1").read_text() == str(signal.SIG_IGN)
    assert (tmp_path / "rank_caught").read_text() == "USR1"


# ppma_scale.engine.dist: what SLURM sets in a batch script and in the tasks of an srun step.
BATCH_ENV = {"SLURM_JOB_ID": "777", "SLURM_PROCID": "0", "SLURM_NTASKS": "32", "SLURM_NNODES": "4",
             "SLURM_LOCALID": "0", "MASTER_ADDR": "node-a", "MASTER_PORT": "20777"}


def _step_task(procid: int, localid: int, **extra: str) -> dict[str, str]:
    return {**BATCH_ENV, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "32", "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(localid), **extra}


def test_a_plain_python_in_the_batch_script_is_a_world_of_one():
    env = resolve_launch_env(BATCH_ENV)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("0", "1", "0")


def test_a_task_of_an_srun_step_gets_its_rank_and_the_step_world():
    env = resolve_launch_env(_step_task(13, 5))
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("13", "32", "5", "20777")
    # srun --preserve-env keeps the job's SLURM_NTASKS; the step's own count is SLURM_STEP_NUM_TASKS
    env = resolve_launch_env(_step_task(1, 1, SLURM_NTASKS="64", SLURM_STEP_NUM_TASKS="8"))
    assert env["WORLD_SIZE"] == "8"


def test_an_srun_step_without_master_port_uses_the_job_port():
    task = _step_task(3, 3)
    del task["MASTER_PORT"]
    assert resolve_launch_env(task)["MASTER_PORT"] == str(slurm_job_port(777)) == str(20000 + 777)


def test_a_launcher_inside_an_srun_step_still_names_the_ranks():
    """deepspeed / torchrun started by srun: their RANK / WORLD_SIZE / LOCAL_RANK win over the step's."""
    launched = _step_task(1, 0, SLURM_STEP_NUM_TASKS="4", RANK="11", WORLD_SIZE="32", LOCAL_RANK="3",
                          MASTER_PORT="29511")
    env = resolve_launch_env(launched)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("11", "32", "3", "29511")


@pytest.mark.parametrize("local_rank,cuda_devices,expected", [
    (3, 8, torch.device("cuda", 3)),  # every GPU of the node visible (deepspeed, torchrun, --gpus-per-node)
    (3, 1, torch.device("cuda", 0)),  # --gpus-per-task=1 / --gpu-bind: the task sees only its own GPU
    (5, 2, torch.device("cuda", 1)),  # two GPUs per task
    (3, 0, torch.device("cpu")),
])
def test_rank_device_maps_the_local_rank_onto_the_visible_gpus(local_rank, cuda_devices, expected):
    assert rank_device(local_rank, cuda_devices) == expected

import os
import signal

import pytest

from ppma_scale.engine.dist import resolve_launch_env
from ppma_scale.engine.signals import StopRequest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_stop_request_records_the_signal_and_restores_handlers(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    assert not stop.requested
    os.kill(os.getpid(), sig)
    assert stop.requested and stop.signal_name == sig.name
    stop.close()
    assert signal.getsignal(sig) == before


def test_a_first_ctrl_c_requests_a_stop_and_a_second_aborts(capsys):
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and stop.signal_name == "SIGINT"
    assert "Ctrl-C: stopping after this step and saving a checkpoint" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    stop.close()
    assert signal.getsignal(signal.SIGINT) == before


def test_a_first_ctrl_c_says_what_this_stop_will_do(capsys):
    stop = StopRequest(first_ctrl_c="stopping the evaluation at the next batch")
    try:
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.close()
    assert stop.requested and capsys.readouterr().err == "Ctrl-C: stopping the evaluation at the next batch\n"


def test_launch_env_plain_process_is_a_world_of_one():
    env = resolve_launch_env({})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    assert int(env["MASTER_PORT"]) > 0


def test_launch_env_torchrun_kept_and_srun_translated():
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert resolve_launch_env(torchrun) == torchrun
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "n0"}
    env = resolve_launch_env(srun)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("5", "16", "1", "29500")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        resolve_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        resolve_launch_env({"RANK": "1"})


EXIT_RANK_SCRIPT = r'''
import atexit, sys, threading, time
from pathlib import Path
from ppma_scale.engine.dist import exit_rank
out = Path(sys.argv[1])

class Finalised:
    def __del__(self):
        (out / "finalised").write_text("interpreter torn down")

keep = Finalised()  # a module global: only interpreter finalisation would delete it
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late_writer():
    time.sleep(0.3)
    (out / "thread").write_text("joined")

threading.Thread(target=late_writer).start()
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(1)  # an idle non-daemon worker, as torch.compile's compile pool leaves one
pool.submit(int).result()
sys.stdout.write("no newline, still buffered")
exit_rank(7)
'''

RUN_RANK_SCRIPT = r'''
import sys
from pathlib import Path
from ppma_scale.engine.dist import run_rank
out, how = Path(sys.argv[1]), sys.argv[2]

class Finalised:
    def __del__(self):
        (out / "finalised").write_text("interpreter torn down")

keep = Finalised()

def main():
    if how == "raise":
        raise RuntimeError("rank 1 data broke")
    if how == "usage":
        sys.exit(2)  # what argparse does on a bad flag
    return 0

run_rank(main)
'''


def test_exit_rank_runs_exit_handlers_and_flushes_but_skips_finalisation(tmp_path):
    """A launched rank leaves through exit_rank: the exit code, buffered output, exit handlers and
    running (non-daemon) threads all count, an idle thread pool does not keep it waiting (a rank
    with `model.compile` hung there after its last step), and the interpreter is not torn down
    (where the gloo threads DeepSpeed keeps alive can abort a finished rank)."""
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", EXIT_RANK_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 7, done.stderr
    assert done.stdout == "no newline, still buffered"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
    assert not (tmp_path / "finalised").exists()


@pytest.mark.parametrize("how, code", [("raise", 1), ("usage", 2), ("ok", 0)])
def test_run_rank_ends_error_paths_through_exit_rank_too(tmp_path, how, code):
    """An exception escaping a launch script's main is printed and ends the rank with 1 without
    interpreter teardown, like a normal end (the failed rank of a job must not abort instead)."""
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", RUN_RANK_SCRIPT, str(tmp_path), how], capture_output=True,
                          text=True, timeout=60, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == code, done.stderr
    assert ("RuntimeError: rank 1 data broke" in done.stderr) == (how == "raise")
    assert "Traceback" in done.stderr if how == "raise" else done.stderr == ""
    assert not (tmp_path / "finalised").exists()

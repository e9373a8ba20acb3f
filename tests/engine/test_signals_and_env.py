import os
import signal

import pytest

from ppma_scale.engine.dist import resolve_launch_env
from ppma_scale.engine.signals import StopRequest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_request_records_the_signal_and_restores_handlers(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    assert not stop.requested
    os.kill(os.getpid(), sig)
    assert stop.requested and stop.signal_name == sig.name
    stop.close()
    assert signal.getsignal(sig) == before


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

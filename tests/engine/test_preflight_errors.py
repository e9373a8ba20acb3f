"""Inputs found wrong only after DeepSpeed had started (a traceback, files written) are now refused
by the checks before start-up: one line naming the key, exit 2, nothing written."""
from __future__ import annotations

from pathlib import Path

from ppma_scale.cli import launch

REPO = Path(__file__).resolve().parents[2]


def refused(capsys, *args: str) -> str:
    code = launch(["--config", str(REPO / "configs" / "demo" / "pretrain_test.yaml"), *args], stage="pretrain",
                  tasks=("mae",))
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_min_lr_above_the_scaled_peak_is_refused_before_start_up(capsys, tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    err = refused(capsys, "--output", str(run_dir), f"data.train={tiny_shards['nohuman']}", "optim.lr=null",
                  "optim.base_lr=1e-3", "optim.min_lr=1e-4")
    assert "optim.min_lr must lie in [0, peak lr = " in err and not run_dir.exists()


def test_an_output_inside_a_file_is_refused_before_start_up(capsys, tmp_path, tiny_shards):
    precious = tmp_path / "notes.txt"
    precious.write_text("precious")
    for output in (precious, precious / "run"):
        err = refused(capsys, "--output", str(output), f"data.train={tiny_shards['nohuman']}")
        assert f"--output {output}: {precious} is a file, not a directory" in err
    assert precious.read_text() == "precious"

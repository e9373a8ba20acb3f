"""`python -m ppma_scale.summary`: one row per run from the files a run writes as it goes.

The run directories here are written by the tests in the trainer's formats (config.yaml,
metrics.jsonl, events.jsonl), so every rule can be pinned down; tests/stages checks a real run's row.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ppma_scale.summary import format_table, main, summarize_run

CONFIG = {"run": {"task": "mae"}, "model": {"size": "l"}, "data": {"num_frames": 16, "img_size": 224},
          "train": {"micro_batch": 8, "grad_accum": 2}}


def write_run(root: Path, metrics: list[dict], events: list[dict], config: dict | None = CONFIG) -> Path:
    root.mkdir(parents=True)
    if config is not None:
        (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return root


def window(step: int, clips: float, loss: float = 1.0, **extra) -> dict:
    return {"step": step, "epoch": step / 10, "loss": loss, "clips_per_s": clips, "peak_mem_gb": step / 100, **extra}


def test_rates_are_medians_of_the_latest_attempt_without_its_start_up_window(tmp_path):
    """An attempt of 4 ranks logged steps 10-30, then a resume on 8 ranks from step 30: the row is
    that resume's, its first window (start-up) left out, whatever the earlier attempt ran at."""
    run = write_run(tmp_path / "run", [
        window(10, 50.0), window(20, 400.0), window(30, 410.0, mfu=0.2),  # the first attempt
        window(40, 5.0, mfu=0.01, data_wait=0.9), window(50, 800.0, mfu=0.4, data_wait=0.1),
        window(60, 820.0, mfu=0.42, data_wait=0.05), window(70, 790.0, loss=0.5, mfu=0.38, data_wait=0.2),
    ], [
        {"event": "start", "step": 0, "world_size": 4, "total_steps": 100},
        {"event": "stop", "step": 30, "signal": "SIGUSR1"},
        {"event": "start", "step": 30, "world_size": 8, "total_steps": 100, "global_batch": 128},
    ])
    row = summarize_run(run)
    assert (row.clips_per_s, row.mfu, row.data_wait) == (800.0, 0.4, 0.1)  # medians of the last three windows
    assert (row.ranks, row.global_batch, row.step, row.total_steps, row.loss) == (8, 128, 70, 100, 0.5)
    assert row.status == "started" and row.peak_mem_gb == 0.7 and row.model == "ViT-L 16x224"
    assert row.top1 is None and row.task == "mae"


def test_a_stopped_run_its_evaluation_and_a_global_batch_from_the_config(tmp_path):
    run = write_run(tmp_path / "probe", [window(5, 100.0), window(10, 120.0)], [
        {"event": "start", "step": 0, "world_size": 2, "total_steps": 20},  # written before global_batch was
        {"event": "eval", "step": 10, "top1": 57.4, "top5": 96.1},
        {"event": "stop", "step": 10, "signal": "SIGTERM"},
    ])
    row = summarize_run(run)
    assert row.status == "stopped (SIGTERM)" and (row.top1, row.top5) == (57.4, 96.1)
    assert row.global_batch == 8 * 2 * 2 and row.clips_per_s == 120.0
    finished = write_run(tmp_path / "done", [window(20, 1.0)], [{"event": "start", "step": 0, "world_size": 1},
                                                                {"event": "end", "step": 20}])
    assert summarize_run(finished).status == "finished"


def test_a_run_still_writing_its_last_line_and_one_that_logged_nothing_yet(tmp_path):
    run = write_run(tmp_path / "live", [window(10, 100.0), window(20, 200.0)],
                    [{"event": "start", "step": 0, "world_size": 2}])
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 30, "loss"')  # torn: being written
    assert summarize_run(run).step == 20
    fresh = write_run(tmp_path / "fresh", [], [])
    row = summarize_run(fresh)
    assert row.step is None and row.clips_per_s is None and row.status is None
    table = format_table([summarize_run(run), row]).splitlines()
    assert table[0].split() == ["run", "task", "model", "ranks", "global_batch", "step", "epoch", "status", "loss",
                                "clips_per_s", "peak_mem_gb"]  # columns no run has are left out
    assert table[1].split()[4:7] == ["2", "32", "20"] and table[2].split()[4:7] == ["-", "-", "-"]


def test_the_command_refuses_a_folder_that_is_no_run_and_keeps_an_existing_csv(tmp_path, capsys):
    run = write_run(tmp_path / "run", [window(10, 100.0), window(20, 300.0)], [{"event": "start", "step": 0,
                                                                               "world_size": 2}])
    (tmp_path / "runs").mkdir()
    assert main([str(run), str(tmp_path / "runs")]) == 2
    assert f"{tmp_path / 'runs'} is not a run directory" in capsys.readouterr().err
    out = tmp_path / "table.csv"
    assert main([str(run), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["run"] == str(run) and float(rows[0]["clips_per_s"]) == 300.0 and rows[0]["top1"] == ""
    assert str(run) in capsys.readouterr().out
    out.write_text("kept")
    assert main([str(run), "--csv", str(out)]) == 2 and out.read_text() == "kept"
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(run), "--csv", str(run / "metrics.jsonl"), "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 10


@pytest.mark.parametrize("content", ["run: [unclosed", "- a list"])
def test_an_unreadable_config_is_named(tmp_path, content):
    run = write_run(tmp_path / "run", [], [], config=None)
    (run / "config.yaml").write_text(content)
    if content.startswith("-"):
        assert summarize_run(run).task is None  # not a mapping: nothing read from it
    else:
        with pytest.raises(ValueError, match="config.yaml is not readable YAML"):
            summarize_run(run)

"""The launchers' own inputs: --output and --config mistakes, and a config for another stage, are
reported first, in one line, before anything is loaded further or written."""
from pathlib import Path

import pytest

from ppma_scale.cli import launch, parse_launch_args

REPO = Path(__file__).resolve().parents[2]


def launch_error(capsys, *argv: str, stage: str = "pretrain", tasks: tuple[str, ...] = ("mae",)) -> str:
    assert launch(list(argv), stage=stage, tasks=tasks) == 2
    return capsys.readouterr().err


@pytest.fixture(autouse=True)
def in_repo(monkeypatch) -> None:
    monkeypatch.chdir(REPO)


# ---------------------------------------------------------------- 6. --output

@pytest.mark.parametrize("output", ["", "  "])
def test_an_empty_output_is_refused_not_replaced_by_run_output(capsys, output: str) -> None:
    err = launch_error(capsys, "--config", "configs/demo/pretrain_test.yaml", "--output", output,
                       "data.train=/nowhere/manifest.json")
    assert "--output is an empty path" in err and "was a shell variable unset?" in err
    assert "manifest" not in err  # refused before the config's run.output (and its data) were used


def test_a_leading_tilde_in_output_is_the_home_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    args = parse_launch_args(["--config", "c.yaml", "--output", "~/runs/x"], "pretrain")
    assert args.output == str(tmp_path / "runs" / "x")
    assert parse_launch_args(["--config", "c.yaml"], "pretrain").output is None


# ---------------------------------------------------------------- 7. a config for another stage

def test_a_config_for_another_stage_is_named_before_its_missing_keys(capsys) -> None:
    err = launch_error(capsys, "--config", "configs/demo/align_test.yaml")
    assert "run.task='classify' (set in configs/demo/../base/finetune.yaml), but launch/pretrain.py runs 'mae'" in err
    assert "is required" not in err


def test_run_task_given_on_the_command_line_is_checked_first_too(capsys) -> None:
    err = launch_error(capsys, "--config", "configs/demo/pretrain_test.yaml", "run.task=linprobe")
    assert "run.task='linprobe' (set in the command line), but launch/pretrain.py runs 'mae'" in err
    err = launch_error(capsys, "--config", "configs/demo/pretrain_test.yaml", "run.task=segment")
    assert "run.task" in err and "must be one of" in err  # an unknown task: the schema's message


# ---------------------------------------------------------------- 8. a directory as --config

def test_a_directory_as_config_says_so(capsys) -> None:
    err = launch_error(capsys, "--config", "configs")
    assert "configs is a directory" in err and "YAML" in err
    assert "does not exist" not in err

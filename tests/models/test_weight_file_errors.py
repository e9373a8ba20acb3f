"""A file that is not the weights it claims to be is diagnosed (not a weights file, truncated, or
really in need of pickled code), names its path, and reaches the user as one line, not a traceback."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ppma_scale.convert import main as convert_main
from ppma_scale.models.convert import load_weights_file


class NotATensor:
    pass


STATE = {"w": torch.arange(4096.0).reshape(64, 64)}


def truncated(path, into):
    data = path.read_bytes()
    into.write_bytes(data[: len(data) // 2])
    return into


@pytest.fixture()
def files(tmp_path):
    torch.save(STATE, tmp_path / "ok.pt")
    torch.save(STATE, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(STATE, tmp_path / "ok.safetensors")
    torch.save({"model": STATE, "evil": NotATensor()}, tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "text.safetensors").write_text("hello\n")
    (tmp_path / "empty.bin").write_bytes(b"")
    truncated(tmp_path / "ok.pt", tmp_path / "cut.pt")
    truncated(tmp_path / "legacy.pt", tmp_path / "cut_legacy.pt")
    truncated(tmp_path / "ok.safetensors", tmp_path / "cut.safetensors")
    return tmp_path


@pytest.mark.parametrize("name, diagnosis", [
    ("text.pt", "is not a weights file: neither safetensors, nor a PyTorch zip archive, nor a pickle"),
    ("empty.bin", "is empty"),
    ("cut.pt", "is a truncated or damaged PyTorch checkpoint"),
    ("cut_legacy.pt", "is a truncated or damaged PyTorch checkpoint"),
    ("evil.pt", "cannot be read without running pickled code (it stores a"),
    ("text.safetensors", "is not a readable safetensors file"),
    ("cut.safetensors", "is not a readable safetensors file"),
])
def test_each_kind_of_bad_file_gets_its_own_diagnosis(files, name, diagnosis):
    with pytest.raises(ValueError) as err:
        load_weights_file(files / name)
    assert str(files / name) in str(err.value) and diagnosis in str(err.value)
    if name != "evil.pt":
        assert "pickled code" not in str(err.value)


def test_good_files_still_load_whatever_their_name(files):
    for name in ("ok.pt", "legacy.pt", "ok.safetensors"):
        torch.testing.assert_close(load_weights_file(files / name)["w"], STATE["w"])
    (files / "weights.bin").write_bytes((files / "ok.safetensors").read_bytes())
    torch.testing.assert_close(load_weights_file(files / "weights.bin")["w"], STATE["w"])


def test_early_check_names_the_key_without_loading(files):
    from ppma_scale.engine.pretrained import check_source
    with pytest.raises(ValueError, match=r"^model.init: .*text.safetensors is not a readable safetensors file"):
        check_source("model.init", files / "text.safetensors")
    with pytest.raises(FileNotFoundError, match=r"^model.average\[1\]: .*nope does not exist"):
        check_source("model.average[1]", files / "nope")
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        check_source("model.init", files)  # a folder that is neither a run nor a Hugging Face model
    check_source("model.init", files / "ok.pt")


def test_convert_cli_reports_a_bad_safetensors_file_as_one_line(files, capsys):
    assert convert_main([str(files / "text.safetensors"), str(files / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppma-convert: error: ") and "text.safetensors is not a readable safetensors" in err
    assert not (files / "out.safetensors").exists()


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path):
    from ppma_scale.models.convert import save_safetensors
    out = save_safetensors(STATE, tmp_path / "w.safetensors")
    before = out.read_bytes()
    with pytest.raises(Exception):  # safetensors refuses to write a non-contiguous tensor
        save_safetensors({"w": torch.zeros(4, 4).t()}, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_trunk_with_another_patch_size_is_one_line_naming_the_keys_to_set(tmp_path, tiny_shards):
    """Found only once the model is built (every rank), so it must still reach the user as one line
    with the fix, not as per-rank tracebacks about position tables."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from ppma_scale.config import load_config
    from ppma_scale.models import build_encoder
    repo = Path(__file__).resolve().parents[2]
    config = repo / "configs" / "demo" / "pretrain_test.yaml"
    other = load_config(config, ["data.train=unused", "model.patch_size=8"]).model
    trunk = build_encoder(other, 4, 32)
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, tmp_path / "patch8.safetensors")
    done = subprocess.run([sys.executable, str(repo / "launch" / "pretrain.py"), "--config", str(config), "--output",
                           str(tmp_path / "run"), f"model.init={tmp_path / 'patch8.safetensors'}",
                           f"data.train={tiny_shards['nohuman']}"], capture_output=True, text=True, timeout=300,
                          cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("launch/pretrain.py: error: model.init: ") and "patch8.safetensors" in line
    assert line.endswith("the checkpoint embeds 2x8x8 tubelets into 32 channels, this model 2x16x16 into 32 "
                         "(these cannot be adapted): set model.patch_size=8")

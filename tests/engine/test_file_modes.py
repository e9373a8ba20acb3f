"""Weights written through a temporary file get the mode a plain open() gives (0o666 less the umask),
not mkstemp's 0o600 that colleagues on a shared cluster cannot read."""
from __future__ import annotations

import os
import stat

import torch

from ppma_scale.atomic import write_text_atomic
from ppma_scale.models.convert import save_safetensors


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_saved_safetensors_have_the_mode_of_a_plain_open(tmp_path):
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    weights = save_safetensors({"w": torch.zeros(2, 3)}, tmp_path / "weights.safetensors", metadata={"format": "pt"})
    assert _mode(weights) == _mode(tmp_path / "plain.txt"), (oct(_mode(weights)), oct(_mode(tmp_path / "plain.txt")))
    save_safetensors({"w": torch.ones(2, 3)}, weights)  # replacing an existing file as well
    assert _mode(weights) == _mode(tmp_path / "plain.txt")
    text = write_text_atomic(tmp_path / "config.json", "{}\n")
    assert _mode(text) == _mode(tmp_path / "plain.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "plain.txt", "weights.safetensors"]


def test_the_mode_follows_the_process_umask(tmp_path):
    """Under umask 027 a group may read the weights and others may not: the mode is not a fixed 0o644."""
    import subprocess
    import sys
    code = ("import os, sys, torch; os.umask(0o027)\n"
            "from ppma_scale.models.convert import save_safetensors\n"
            "save_safetensors({'w': torch.zeros(1)}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.safetensors")], check=True, timeout=120)
    assert _mode(tmp_path / "w.safetensors") == 0o640

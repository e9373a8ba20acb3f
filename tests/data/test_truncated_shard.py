"""A local shard cut short keeps every sample whose files all precede the cut, and no other."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from ppma_scale.data.tarread import ShardReader, _LocalShard, _split


def shard_of(manifest: Path) -> tuple[Path, int]:
    """The first shard of a tiny set and its sample count."""
    first = json.loads(manifest.read_text())["shards"][0]
    return manifest.parent / first["url"], int(first["samples"])


def members_by_sample(path: Path) -> list[list[tarfile.TarInfo]]:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isreg()]
    samples: list[list[tarfile.TarInfo]] = []
    for m in members:
        if not samples or _split(samples[-1][0].name)[0] != _split(m.name)[0]:
            samples.append([])
        samples[-1].append(m)
    return samples


def cut_copy(src: Path, dst: Path, size: int) -> str:
    dst.write_bytes(src.read_bytes()[:size])
    return str(dst)


def test_truncated_local_shard_keeps_the_whole_samples_before_the_cut(tiny_shards, tmp_path):
    src, total = shard_of(tiny_shards["synthetic"])
    samples = members_by_sample(src)
    assert total == len(samples) >= 3 and all(len(files) >= 2 for files in samples)
    cuts = [(samples[2][0], 2),   # inside sample 2's first file: samples 0 and 1 are whole, both kept
            (samples[2][-1], 2),  # inside sample 2's last file: sample 2 lacks it, dropped
            (samples[1][-1], 1)]  # inside sample 1's last file
    for n, (member, kept) in enumerate(cuts):
        path = cut_copy(src, tmp_path / f"cut{n}.tar", member.offset_data + member.size // 2)  # short of its end
        shard = _LocalShard(path)
        try:
            assert shard.truncated
            assert [key for key, _ in shard.samples] == [_split(f[0].name)[0] for f in samples[:kept]], member.name
        finally:
            shard.close()

        reader = ShardReader({path: total})
        try:
            with tarfile.open(src) as tar:  # the kept samples read back whole, byte for byte
                for index in range(kept):
                    sample = reader.read(path, index)
                    for m in samples[index]:
                        assert sample[_split(m.name)[1]] == tar.extractfile(m).read()
            assert reader.read(path, kept) is None
            assert reader.problems == [{"url": path, "reason": f"truncated: holds {kept} readable samples, "
                                                              f"manifest says {total}"}]
        finally:
            reader.close()

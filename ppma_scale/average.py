"""Plain weight averaging of checkpoints ("model soup"), written as one safetensors file.

    python -m ppma_scale.average RUN_A RUN_B [...] --out soup.safetensors [--weights 0.5 0.5] [--trunk]

Inputs are run directories (their latest checkpoint), checkpoint folders, or weights files. By
default whole models are averaged and must share their keys (e.g. two fine-tunes of one task);
`--trunk` first reduces each input to its trunk, so an MAE run and an aligned run can be blended
(decoder, mask token and heads dropped). The output loads with `model.init=soup.safetensors`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import refuse_overwriting_inputs, refuse_replacing_outputs, run_tool
from .engine.averaging import average_state_dicts, check_distinct, check_same_layout, check_weights


def average_files(inputs: list[str], out: str | Path, weights: list[float] | None = None,
                  trunk_only: bool = False, overwrite: bool = False) -> Path:
    """Average the checkpoints `inputs` (uniformly unless `weights`) into the safetensors file `out`.

    Everything that can be checked before reading the (possibly large) inputs is: their number, the
    weights, that `out` is none of them, and that it does not exist unless `overwrite`.
    """
    from .engine.pretrained import read_state_dict, read_trunk
    from .models.convert import save_safetensors, token_grid_metadata
    if len(inputs) < 2:
        raise ValueError(f"give at least 2 checkpoints to average, got {len(inputs)}")
    if weights is not None:
        try:
            check_weights(weights, len(inputs))
        except ValueError as exc:
            raise ValueError(f"--weights: {exc}") from None
    refuse_overwriting_inputs([out], inputs)
    refuse_replacing_outputs([out], overwrite)
    states = [read_trunk(path).state if trunk_only else read_state_dict(path) for path in inputs]
    if trunk_only:
        states = _drop_unshared_final_norms(states)
    try:
        check_same_layout(states, names=inputs)
    except ValueError as exc:
        hint = "" if trunk_only else " (to blend models with different heads or decoders, pass --trunk)"
        raise ValueError(f"{exc}{hint}") from None
    check_distinct(states, names=inputs)
    averaged = average_state_dicts(states, weights)
    shown = weights if weights is not None else [round(1 / len(inputs), 6)] * len(inputs)
    metadata = {"format": "ppma_scale", "averaged_from": "\n".join(str(p) for p in inputs),
                "weights": " ".join(str(w) for w in shown), "trunk_only": str(trunk_only)}
    grids = {_token_grid(path, state, trunk_only) for path, state in zip(inputs, states)}
    if len(grids) == 1 and None not in grids:  # what a learned position table's count cannot tell
        metadata.update(token_grid_metadata(grids.pop()))
    return save_safetensors({k: v.contiguous() for k, v in averaged.items()}, out, metadata=metadata)


def _token_grid(path: str | Path, state: dict, is_trunk: bool) -> tuple[int, int, int] | None:
    """The token grid the input at `path` records, if it is a video trunk (or holds one)."""
    from .engine.pretrained import source_token_grid
    from .models.convert import to_trunk_state_dict
    try:
        return source_token_grid(path, state if is_trunk else to_trunk_state_dict(state)[0])
    except ValueError:  # not a model we know: nothing to record
        return None


def _drop_unshared_final_norms(states: list[dict]) -> list[dict]:
    """An MAE's trunk ends in a norm that a classifier's trunk lacks (its head normalises instead);
    blending the two keeps the tensors they share."""
    shared = set.intersection(*(set(s) for s in states))
    unshared = set.union(*(set(s) for s in states)) - shared
    if unshared and all(key.startswith("norm.") for key in unshared):
        return [{k: v for k, v in s.items() if k in shared} for s in states]
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppma_scale.average", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("inputs", nargs="+", help="run directories, checkpoint folders or weights files")
    parser.add_argument("--out", "--output", required=True, help="safetensors file to write")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one non-negative weight per input, summing to 1 (default: uniform)")
    parser.add_argument("--trunk", action="store_true", help="average only the trunks (drop decoders/heads)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    args = parser.parse_args(argv)
    def work() -> int:
        print(average_files(args.inputs, args.out, args.weights, args.trunk, args.overwrite))
        return 0
    return run_tool("average", work)


if __name__ == "__main__":
    sys.exit(main())

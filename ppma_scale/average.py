"""Plain weight averaging of checkpoints ("model soup"), written as one safetensors file.

    python -m ppma_scale.average RUN_A RUN_B [...] --out soup.safetensors [--weights 0.5 0.5] [--trunk]

Inputs are run directories (their latest checkpoint), checkpoint folders, or weights files. By
default whole models are averaged and must share their keys (e.g. two fine-tunes of one task);
`--trunk` first reduces each input to its trunk, so an MAE run and an aligned run can be blended
(decoder, mask token and heads dropped). The output loads with `model.init=soup.safetensors`.

Classification heads are blended only between models of one label space: logit i of each must mean
the same class. Without `--trunk` the class names each input records (a run's or checkpoint's marker,
an exported or averaged file's metadata) must be the same names in the same order, and the soup
records them in its metadata. Inputs that record none (pre-training runs, foreign weights, checkpoints
saved before classes were recorded) are averaged only if none of the inputs records any (with a
warning when they hold classification heads, and no classes in the soup): a mix is refused, since
nothing says the unrecorded heads use the recorded order.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import refuse_overwriting_inputs, refuse_replacing_outputs, run_tool
from .engine.averaging import average_state_dicts, check_distinct, check_same_layout, check_weights


def average_files(inputs: list[str], out: str | Path, weights: list[float] | None = None,
                  trunk_only: bool = False, overwrite: bool = False) -> Path:
    """Average the checkpoints `inputs` (uniformly unless `weights`) into the safetensors file `out`.

    Everything that can be checked before reading the (possibly large) inputs is: their number, the
    weights, that `out` is none of them, that it does not exist unless `overwrite`, and (heads kept)
    that the inputs record one label space (`same_classes`), which the soup then records too.
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
    classes = None if trunk_only else same_classes(inputs, [recorded_classes(path) for path in inputs])
    states = [read_trunk(path).state if trunk_only else read_state_dict(path) for path in inputs]
    if trunk_only:
        states = _drop_unshared_final_norms(states)
    try:
        check_same_layout(states, names=inputs)
    except ValueError as exc:
        hint = "" if trunk_only else " (to blend models with different heads or decoders, pass --trunk)"
        raise ValueError(f"{exc}{hint}") from None
    check_distinct(states, names=inputs)
    if classes is None and not trunk_only and _has_head(states[0]):
        print("WARNING: none of the inputs records its class names (checkpoints saved before they were "
              "recorded, or weights from elsewhere): their classification heads are averaged logit by logit, "
              "which is right only if they were all trained with one class order; the soup records none",
              file=sys.stderr, flush=True)
    averaged = average_state_dicts(states, weights)
    shown = weights if weights is not None else [round(1 / len(inputs), 6)] * len(inputs)
    metadata = {"format": "ppma_scale", "averaged_from": "\n".join(str(p) for p in inputs),
                "weights": " ".join(str(w) for w in shown), "trunk_only": str(trunk_only)}
    if classes is not None:  # logit i is classes[i], as in every input
        metadata["classes"] = json.dumps(classes)
    grids = {_token_grid(path, state, trunk_only) for path, state in zip(inputs, states)}
    if len(grids) == 1 and None not in grids:  # what a learned position table's count cannot tell
        metadata.update(token_grid_metadata(grids.pop()))
    return save_safetensors({k: v.contiguous() for k, v in averaged.items()}, out, metadata=metadata)


def recorded_classes(path: str | Path) -> list[str] | None:
    """The class names (logit order) the input at `path` records: a run's or checkpoint's marker, or a
    weights file's metadata (`ppma-export`, or an earlier soup); None when it records none."""
    from .engine.pretrained import is_run_or_checkpoint
    from .models.convert import recorded_class_names
    location = Path(path).expanduser()
    if is_run_or_checkpoint(location):
        from .engine.checkpoint import find_checkpoint, read_marker
        ckpt = find_checkpoint(location, what="checkpoint to average", deep=False)  # its marker only
        classes = (read_marker(ckpt.path) or {}).get("classes")
    elif location.exists():
        classes = recorded_class_names(location)
    else:  # read_state_dict names the missing input
        return None
    return [str(name) for name in classes] if classes else None


def same_classes(inputs: list[str], recorded: list[list[str] | None]) -> list[str] | None:
    """The label space the `inputs` share (`recorded[i]` is what inputs[i] records), or None when none
    records one; ValueError naming two inputs when they differ, or the inputs that record none when
    others do: their heads would be blended logit by logit, whatever class each logit means."""
    from .engine.classify import class_difference
    known = [(name, classes) for name, classes in zip(inputs, recorded) if classes is not None]
    if not known:
        return None
    if len(known) < len(inputs):
        lacking = [str(name) for name, classes in zip(inputs, recorded) if classes is None]
        raise ValueError(f"{', '.join(lacking)} record{'s' if len(lacking) == 1 else ''} no class names, but "
                         f"{known[0][0]} does: the order of the heads' logits cannot be checked, and blending "
                         "heads of different class orders mixes classes. Average models that all record "
                         "their classes, or pass --trunk to average the trunks only (heads dropped)")
    first_name, first = known[0]
    for name, classes in known[1:]:
        if classes == first:
            continue
        what = class_difference(first, classes, f"in {first_name}", f"in {name}")
        raise ValueError(f"{first_name} and {name} were trained on different label spaces, {what}: their "
                         "classification heads cannot be averaged (each logit would blend different classes). "
                         "Average runs trained with the same data.classes, or pass --trunk to average the "
                         "trunks only (heads dropped)")
    return list(first)


def _has_head(state: dict) -> bool:
    """Whether `state` holds a classification head (ours, or a Hugging Face classifier's)."""
    return any(key.removeprefix("module.").startswith(("head.", "classifier.")) for key in state)


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

"""`python -m ppma_scale.convert` / `ppma-convert`: move trunk weights between layouts.

    ppma-convert IN OUT.safetensors                 # any known layout -> our trunk keys
    ppma-convert IN OUT_DIR --to hf                 # -> transformers VideoMAE (config.json + safetensors)

IN is a checkpoint file (.safetensors, .pt/.pth/.bin) or a Hugging Face model directory in one of
the layouts of `ppma_scale.models.convert` (ours, VideoMAE v1/v2, OmniMAE/PPMA, transformers).
The trunk is rebuilt for --num-frames x --img-size clips (position tables adapted), so the
output fits the clip geometry you train or evaluate at; by default the clips of the run an
`ppma-export` file came from (its metadata records the config), else 16 x 224.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ppma_scale.cli import refuse_overwriting_inputs, refuse_replacing_outputs, run_tool
from ppma_scale.models.convert import (encoder_from_trunk, export_hf, linear_head_state_dict, load_trunk_weights,
                                       load_weights_file, recorded_class_names, recorded_clip_geometry,
                                       recorded_token_grid, save_safetensors, to_trunk_state_dict,
                                       token_grid_metadata)
from ppma_scale.models.hf_export import num_heads_from_hf_config

DEFAULT_CLIP = (16, 224)  # frames, pixels: the paper's clips, for inputs that do not record theirs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ppma-convert", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("input", help="checkpoint file or Hugging Face model directory")
    parser.add_argument("output", help="output .safetensors file (--to trunk) or directory (--to hf)")
    parser.add_argument("--to", choices=("trunk", "hf"), default="trunk")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="clip length to rebuild for (default: the exported run's, else 16)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="clip size to rebuild for (default: the exported run's, else 224)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="needed when width x depth is not in the size table (a Hugging Face folder's "
                             "config.json gives it)")
    parser.add_argument("--source-grid", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
                        help="token grid of the checkpoint's learned position table, if it cannot be inferred")
    parser.add_argument("--allow-pos-mismatch", action="store_true",
                        help="export to hf even though the trunk's position table is not VideoMAE's")
    parser.add_argument("--overwrite", action="store_true", help="replace an output that already exists")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Do one conversion; returns the report that main() prints."""
    from ppma_scale.models.heads import VideoClassifier

    out = Path(args.output)
    written = [out] if args.to == "trunk" else [out / "model.safetensors", out / "config.json"]
    refuse_overwriting_inputs(written, [args.input])
    refuse_replacing_outputs(written, args.overwrite)
    from ppma_scale.engine.pretrained import is_run_or_checkpoint
    if is_run_or_checkpoint(Path(args.input).expanduser()):
        raise ValueError(f"{args.input} is a training run or checkpoint folder: export its weights first "
                         f"(python -m ppma_scale.export {args.input}), then convert the .safetensors file")
    state = load_weights_file(args.input)
    trunk, layout = to_trunk_state_dict(state)
    recorded = recorded_clip_geometry(args.input)  # a ppma-export file knows its run's clips
    default_frames, default_size = recorded or DEFAULT_CLIP
    args.num_frames = args.num_frames if args.num_frames is not None else default_frames
    args.img_size = args.img_size if args.img_size is not None else default_size
    num_heads = args.num_heads if args.num_heads is not None else num_heads_from_hf_config(args.input)
    source_grid = tuple(args.source_grid) if args.source_grid else recorded_token_grid(args.input, trunk)
    encoder = encoder_from_trunk(trunk, args.num_frames, args.img_size, num_heads, final_norm=args.to == "trunk",
                                 source_grid=source_grid)
    report = load_trunk_weights(encoder, trunk, layout, source_grid)
    if args.to == "trunk":
        save_safetensors({k: v.clone() for k, v in encoder.state_dict().items()}, out,
                         metadata={"format": "pt", **token_grid_metadata(encoder.grid)})
    else:
        head = linear_head_state_dict(state, layout)
        model, id2label = encoder, None
        if head is not None:
            model = VideoClassifier(encoder, num_classes=head["fc.weight"].shape[0], head="linear")
            model.head.load_state_dict(head)
            names = recorded_class_names(args.input)
            if names is not None and len(names) == head["fc.weight"].shape[0]:
                id2label = dict(enumerate(names))
            report["labels"] = "class names from the input" if id2label else "LABEL_i (the input records no names)"
        export_hf(model, out, id2label, allow_pos_mismatch=args.allow_pos_mismatch,
                  override_hint="pass --allow-pos-mismatch")
        report["head"] = "exported" if head is not None else "none (trunk only)"
    report["clip"] = f"{args.num_frames} frames x {args.img_size} px" + (
        " (the exported run's)" if recorded == (args.num_frames, args.img_size) else "")
    report["output"] = str(args.output)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    def work() -> int:
        print(json.dumps(convert(args), indent=2))
        return 0
    return run_tool("ppma-convert", work)


if __name__ == "__main__":
    sys.exit(main())

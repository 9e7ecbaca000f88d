"""Convert the authors' checkpoint files to this pack's single .safetensors file.

    python -m imagpose.convert SOURCE OUTPUT.safetensors [--motion-module FILE] [--pose-guider FILE] [--patch-embed FILE]

SOURCE is a folder holding denoising_unet-N.pth, pose_guider-N.pth and patch-N.pth, or the UNet file itself
(the other two are then found next to it by their keys). Pickles are read with torch.load(weights_only=True).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import CheckpointError, build_model, load_weights, save_pack


def convert(source: Path, output: Path, motion_module=None, pose_guider=None, patch_embed=None) -> Path:
    weights = load_weights(source, motion_module=motion_module, pose_guider=pose_guider, patch_embed=patch_embed)
    model = build_model(weights, dtype=next(iter(weights.unet.values())).dtype)
    provenance = {"converted_from": ", ".join(f"{part}={name}" for part, name in sorted(weights.sources.items()))}
    return save_pack(model, output, provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagpose.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--motion-module", type=Path)
    parser.add_argument("--pose-guider", type=Path)
    parser.add_argument("--patch-embed", type=Path)
    args = parser.parse_args(argv)
    if args.output.suffix != ".safetensors":
        parser.error("OUTPUT must end in .safetensors")
    try:
        path = convert(args.source, args.output, args.motion_module, args.pose_guider, args.patch_embed)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"imagpose.convert: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

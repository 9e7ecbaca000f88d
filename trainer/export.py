"""Trained weights out of a trainer checkpoint: the pack file for ComfyUI, or the authors' files.

    python -m trainer.export CHECKPOINT_DIR OUT.safetensors     # pack file (models/imagpose/)
    python -m trainer.export CHECKPOINT_DIR OUT_DIR             # authors' denoising_unet-N.pth, pose_guider-N.pth, patch-N.pth
        [--weights auto|trained|ema]                           # auto: the EMA weights when the run kept them

A checkpoint-N folder stores the weights once, in accelerate's state (for resuming); this reads them without
running any pickle code (safetensors, or torch.load(weights_only=True)). The run's last step is exported by
the trainer itself (OUTPUT_DIR/imagpose-STAGE-N.safetensors).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from imagpose.checkpoints import (POSITIONS_KEY, CheckpointError, IMAGPoseWeights, pack_heads, read_state_dict,
                                  split_pack, write_authors_format, write_pack)
from imagpose.image_encoder import AUTHORS_POSITIONS

STATE_DIR = "state"
TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
WEIGHT_CHOICES = ("auto", "trained", "ema")
# accelerate's model file in state/ (safetensors by default, a torch pickle with safe_serialization off) and
# DeepSpeed's engine file (its 16-bit module weights under "module")
ACCELERATE_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
DEEPSPEED_MODEL_FILE = "pytorch_model/mp_rank_00_model_states.pt"
NET_PREFIX = "model."  # trainer.models.TrainingNet holds the IMAGPoseModel as .model


def is_checkpoint(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / STATE_DIR).is_dir() and (folder / TRAINER_STATE).is_file()


def trainer_state(folder: Path) -> dict:
    try:
        return json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / TRAINER_STATE} is not readable: {error}", folder / TRAINER_STATE) from error


def accelerate_weights(state: Path) -> dict[str, torch.Tensor]:
    """The IMAGPose model's tensors (pack key names) from accelerate's state folder."""
    for name in ACCELERATE_MODEL_FILES:
        if (state / name).is_file():
            tensors, _ = read_state_dict(state / name)
            break
    else:
        path = state / DEEPSPEED_MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"{state} holds no model weights ({', '.join(ACCELERATE_MODEL_FILES)} or "
                                  f"DeepSpeed's {DEEPSPEED_MODEL_FILE})", state)
        try:
            engine = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # the engine pickle may hold objects weights_only refuses
            raise CheckpointError(f"{path} cannot be read with torch.load(weights_only=True) ({error}); recover the "
                                  "weights with DeepSpeed's zero_to_fp32.py", path) from error
        tensors = {k: v for k, v in engine["module"].items() if torch.is_tensor(v)}
    return {k.removeprefix(NET_PREFIX): v for k, v in tensors.items()}


def ema_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    path = folder / EMA_FILE
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}", path) from error


def checkpoint_weights(folder: str | Path, weights: str = "auto") -> tuple[dict[str, torch.Tensor], dict]:
    """(pack-layout tensors, trainer_state.json) of a checkpoint-N folder; `weights` picks trained or EMA values."""
    folder = Path(folder)
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if not is_checkpoint(folder):
        raise CheckpointError(f"{folder} is not a trainer checkpoint folder ({STATE_DIR}/ and {TRAINER_STATE})", folder)
    info = trainer_state(folder)
    tensors = accelerate_weights(folder / STATE_DIR)
    ema = ema_weights(folder) if weights != "trained" else None
    if weights == "ema" and ema is None:
        raise CheckpointError(f"{folder} holds no EMA weights ({EMA_FILE}); the run had train.ema off", folder)
    if ema is not None:
        unknown = sorted(set(ema) - set(tensors))
        if unknown:
            raise CheckpointError(f"{folder / EMA_FILE} holds tensors the model has not, e.g. {unknown[:2]}", folder)
        tensors = {**tensors, **{k: v.to(tensors[k].dtype) for k, v in ema.items()}}
    info["exported_weights"] = "ema" if ema is not None else "trained"
    return tensors, info


def pack_metadata(config: dict, step: int, weights: str) -> dict[str, str]:
    return {"stage": config["stage"], "step": str(step), "weights": weights,
            POSITIONS_KEY: config["model"].get("image_encoder_positions", AUTHORS_POSITIONS)}


def write(tensors: dict[str, torch.Tensor], info: dict, out: str | Path) -> Path:
    """Pack file when `out` ends in .safetensors, else the authors' files in the folder `out`."""
    out = Path(out)
    step = int(info["step"])
    if out.suffix == ".safetensors":
        return write_pack(tensors, info["pack_config"], out, pack_metadata(info["config"], step, info["exported_weights"]))
    write_authors_format(tensors, out, step)
    return out


def export(folder: str | Path, out: str | Path, weights: str = "auto") -> Path:
    tensors, info = checkpoint_weights(folder, weights)
    return write(tensors, info, out)


def model_weights(folder: str | Path, weights: str = "auto") -> IMAGPoseWeights:
    """The checkpoint as the nodes' loader would read its pack file (for the next stage's init_checkpoint)."""
    tensors, info = checkpoint_weights(folder, weights)
    parts = split_pack(tensors)
    metadata = {"config": json.dumps(info["pack_config"])}
    positions = info["config"]["model"].get("image_encoder_positions")
    return IMAGPoseWeights(parts["unet"], parts["pose_guider"], parts["patch_embed"], pack_heads(Path(folder), metadata),
                           {"checkpoint": str(folder)}, positions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint-N folder of a training run")
    parser.add_argument("out", type=Path, help="OUT.safetensors (pack file) or a folder (authors' files)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="auto: the EMA weights when the run kept them (train.ema), else the trained ones")
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, args.weights)
    except CheckpointError as error:
        print(f"trainer.export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

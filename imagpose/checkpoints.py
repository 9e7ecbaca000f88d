"""Reading and writing IMAGPose weights: the authors' .pth files and this pack's single .safetensors file.

Formats are told apart by their keys, never by file names. Every size is read from the tensors, so small
test checkpoints go through exactly the same code as SD1.5-size ones.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .cva import CrossViewAttention
from .model import IMAGPoseModel
from .patch_embed import PatchEmbedding
from .pose_guider import PoseGuider
from .unet import DEFAULT_HEADS, IN_CHANNELS, MOTION_KEY, IMAGPoseUNet, unet_config_from_state_dict

PACK_FORMAT = "imagpose-pack"
PACK_VERSION = "1"
POSITIONS_KEY = "image_encoder_positions"  # pack metadata: how DINOv2's position table was resampled in training
PARTS = ("unet", "pose_guider", "patch_embed")
CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


# torch's messages for a refused pickle advise loading it unsafely (weights_only=False, allowlisting its globals)
UNSAFE_ADVICE = re.compile(r"weights_only|re-?running|trusted source|arbitrary code|safe_globals|allowlist", re.IGNORECASE)


def has_unsafe_advice(text: str) -> bool:
    return UNSAFE_ADVICE.search(text) is not None


def without_unsafe_advice(text: str) -> str:
    """A message with every sentence that advises loading unsafely left out (what was refused stays)."""
    if not has_unsafe_advice(text):
        return text
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    kept = " ".join(s for s in sentences if s and not has_unsafe_advice(s))
    return f"{kept} (refused: the file holds more than tensors, and loading it could run code from it)".strip()


class CheckpointError(ValueError):
    """A file that cannot be used as (part of) an IMAGPose checkpoint; the message says why, `path` which file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


@dataclass
class IMAGPoseWeights:
    unet: dict[str, torch.Tensor]
    pose_guider: dict[str, torch.Tensor]
    patch_embed: dict[str, torch.Tensor]
    heads: int = DEFAULT_HEADS
    sources: dict[str, str] = field(default_factory=dict)  # part -> file it came from
    image_encoder_positions: str | None = None  # from a pack file's metadata; None: not recorded (authors' files)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one file. Pickles load with weights_only=True: code inside is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file", path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path.name} is not a readable safetensors file (truncated?): {error}", path) from error
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path.name} was refused: it is a pickle holding more than tensors, and loading it could run code from "
            f"the file. Only plain state dicts (or safetensors) are accepted. Detail: {without_unsafe_advice(str(error))}",
            path) from None  # torch's own message, in the chain ComfyUI logs, advises loading it unsafely
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path.name} could not be read (truncated or not a torch file): {error}", path) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors", path)
    return {k.removeprefix("module."): v for k, v in loaded.items()}, {}


def classify(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """'pack', 'unet', 'pose_guider' or 'patch_embed'; CheckpointError naming what the file looks like otherwise."""
    keys = state_dict.keys()
    if (metadata or {}).get("format") == PACK_FORMAT or any(k.startswith("unet.conv_in.") for k in keys):
        return "pack"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        channels = state_dict["conv_in.weight"].shape[1]
        if any(k.startswith("add_embedding.") for k in keys):
            raise CheckpointError("this is an SDXL UNet, not an IMAGPose UNet (SD1.5 family, 9 input channels)")
        if channels != IN_CHANNELS:
            raise CheckpointError(
                f"this is a plain diffusers UNet with {channels} input channels; an IMAGPose UNet has {IN_CHANNELS} "
                "(noisy latent 4 + flag 1 + masked grid latent 4)"
            )
        return "unet"
    if "conv_in.weight" in keys and "conv_out.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "pose_guider"
    if set(keys) == {"proj.weight", "proj.bias"}:
        return "patch_embed"
    if any(k.startswith(("input_blocks.", "model.diffusion_model.")) for k in keys):
        raise CheckpointError(
            "this is an original-format (ldm) Stable Diffusion checkpoint, not IMAGPose weights; IMAGPose files use "
            "diffusers key names (down_blocks.*) as the authors saved them"
        )
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise CheckpointError(f"not an IMAGPose checkpoint part: its keys ({sample}, ...) match no known layout")


def split_pack(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Pack-layout tensors (`unet.*`, `pose_guider.*`, `patch_embed.*`) by part."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for key, tensor in state_dict.items():
        part, _, rest = key.partition(".")
        if part not in parts:
            raise CheckpointError(f"unexpected key {key!r} in an IMAGPose pack file")
        parts[part][rest] = tensor
    return parts


def candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_EXTENSIONS)


def peek(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys and shapes without reading the data (safetensors header; memory-mapped zip pickles)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path.name} is not a readable safetensors file (truncated?): {error}", path) from error
        return {k: torch.empty(v, device="meta") for k, v in shapes.items()}, metadata
    return read_state_dict(path)


def survey(files: list[Path]) -> dict[str, list[Path]]:
    """Files by the part their keys say they hold; unreadable or foreign files are left out."""
    kinds: dict[str, list[Path]] = {}
    for path in files:
        try:
            kinds.setdefault(classify(*peek(path)), []).append(path)
        except CheckpointError:
            continue
    return kinds


def _step(path: Path) -> str | None:
    match = re.search(r"-(\d+)$", path.stem)
    return match.group(1) if match else None


def _pick(candidates: list[Path], part: str, step: str | None, widget: str) -> Path:
    """One file of a part; several are told apart by the training step in their names (-N), as the authors save them."""
    if len(candidates) > 1 and step is not None:
        same_step = [p for p in candidates if _step(p) == step]
        candidates = same_step or candidates
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise CheckpointError(f"several {part.replace('_', ' ')} files fit ({names}); choose one with {widget}")
    return candidates[0]


def read_motion_modules(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The CVA (`*.motion_modules.*`) tensors of any file that holds them, keyed as in the IMAGPose UNet.

    Accepts the authors' motion_module-N.pth (a whole UNet), AnimateDiff-style motion-module checkpoints (only
    motion-module tensors, possibly under `state_dict`) and this pack's files (`unet.` prefix).
    """
    state_dict, metadata = read_state_dict(path)
    if (metadata or {}).get("format") == PACK_FORMAT or any(k.startswith("unet.") for k in state_dict):
        state_dict = {k.removeprefix("unet."): v for k, v in state_dict.items()}
    motion = {k: v for k, v in state_dict.items() if MOTION_KEY in k}
    if not motion:
        sample = ", ".join(sorted(state_dict)[:2]) or "no tensors"
        raise CheckpointError(f"{Path(path).name} holds no *{MOTION_KEY}* (cross-view attention) weights; its keys "
                              f"look like {sample}. Expected an authors' motion_module-N.pth, an AnimateDiff motion "
                              "module or an IMAGPose pack file", path)
    return motion


@dataclass
class _Parts:
    """What has been read so far: tensors per part, the file each came from, the pack's head count and positions."""

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    heads: int = DEFAULT_HEADS
    positions: str | None = None

    def read(self, path: Path, required: str | None = None) -> str:
        """Read one file into its part(s); returns the kind its keys say it is."""
        state_dict, metadata = read_state_dict(path)
        try:
            kind = classify(state_dict, metadata)
        except CheckpointError as error:
            raise CheckpointError(f"{path.name}: {error}", path) from error
        if required and kind != required:
            raise CheckpointError(f"{path.name} holds a {kind.replace('_', ' ')}, expected a "
                                  f"{required.replace('_', ' ')}", path)
        if kind == "pack":
            self.heads = pack_heads(path, metadata)
            self.positions = (metadata or {}).get(POSITIONS_KEY)
            for part, tensors in split_pack(state_dict).items():
                if tensors:
                    self.tensors[part], self.sources[part] = tensors, path.name
        else:
            self.tensors[kind], self.sources[kind] = state_dict, path.name
        return kind


def pack_heads(path: Path, metadata: dict[str, str]) -> int:
    """The attention head count a pack file's metadata records (its key shapes cannot tell)."""
    try:
        config = json.loads(metadata.get("config", "{}"))
        heads = int(config.get("heads", DEFAULT_HEADS)) if isinstance(config, dict) else None
    except (ValueError, TypeError, OverflowError) as error:
        raise CheckpointError(f"{path.name}: its metadata 'config' is not the JSON this pack writes ({error})", path) from error
    if heads is None or not 1 <= heads <= 1024:
        raise CheckpointError(f"{path.name}: its metadata 'config' gives no usable head count ({heads!r})", path)
    return heads


def _find_model_file(checkpoint: Path) -> tuple[Path, dict[str, list[Path]] | None]:
    """The UNet or pack file a checkpoint names (itself, or the one such file in a folder), plus the folder's survey."""
    if not checkpoint.is_dir():
        return checkpoint, None
    files = candidate_files(checkpoint)
    if not files:
        raise CheckpointError(f"folder {checkpoint} holds no checkpoint files ({', '.join(CHECKPOINT_EXTENSIONS)})")
    kinds = survey(files)
    models = kinds.get("pack", []) + kinds.get("unet", [])
    if not models:
        raise CheckpointError(f"folder {checkpoint} holds no IMAGPose UNet or pack file "
                              f"(authors' names: denoising_unet-N.pth / motion_module-N.pth)")
    if len(models) > 1:
        names = ", ".join(p.name for p in models)
        raise CheckpointError(f"folder {checkpoint.name} holds several UNets ({names}); choose the file itself as "
                              "checkpoint (authors: stage 2 saves motion_module-N.pth, end-to-end denoising_unet-N.pth)")
    return models[0], kinds


def load_weights(
    checkpoint: str | os.PathLike,
    motion_module: str | os.PathLike | None = None,
    pose_guider: str | os.PathLike | None = None,
    patch_embed: str | os.PathLike | None = None,
) -> IMAGPoseWeights:
    """Collect the three parts from a pack file, an authors' UNet file (siblings found by their keys) or a folder.

    `motion_module` (optional) replaces the CVA weights with those of that file (see `read_motion_modules`).
    `pose_guider`/`patch_embed` name explicit files; otherwise they are looked for next to the checkpoint.
    """
    checkpoint = Path(checkpoint)
    main, kinds = _find_model_file(checkpoint)
    parts = _Parts()
    if parts.read(main) not in ("pack", "unet"):
        raise CheckpointError(f"{main.name} holds a {next(iter(parts.tensors)).replace('_', ' ')}, not an IMAGPose UNet")
    folder = main.parent
    for part, explicit in (("pose_guider", pose_guider), ("patch_embed", patch_embed)):
        if explicit is not None:
            parts.read(Path(explicit), required=part)
        elif part not in parts.tensors:
            if kinds is None:
                kinds = survey([p for p in candidate_files(folder) if p != main])
            if kinds.get(part):
                parts.read(_pick(kinds[part], part, _step(main), part))
    missing = [p for p in PARTS if p not in parts.tensors]
    if missing:
        raise CheckpointError(
            f"missing {', '.join(missing)} weights: looked in {folder} for files whose keys match "
            "(authors' names: denoising_unet-N.pth, pose_guider-N.pth, patch-N.pth)"
        )
    if motion_module is not None:
        parts.tensors["unet"] = {**parts.tensors["unet"], **read_motion_modules(motion_module)}
        parts.sources["motion_modules"] = Path(motion_module).name
    t = parts.tensors
    return IMAGPoseWeights(t["unet"], t["pose_guider"], t["patch_embed"], parts.heads, parts.sources, parts.positions)


def cva_config_from_unet(unet_state_dict: dict[str, torch.Tensor], heads: int) -> dict | None:
    prefix = "down_blocks.0.motion_modules.0."
    module = {k[len(prefix):]: v for k, v in unet_state_dict.items() if k.startswith(prefix)}
    if not module:
        return None
    config = CrossViewAttention.config_from_state_dict(module, heads=heads)
    config.pop("channels")
    return config


def build_model(weights: IMAGPoseWeights, dtype: torch.dtype = torch.float32) -> IMAGPoseModel:
    """Instantiate the plain-PyTorch model with the given weights (strict: every tensor must fit)."""
    try:
        config = unet_config_from_state_dict(weights.unet, heads=weights.heads)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"UNet weights are incomplete: missing {error}") from error
    cva_config = cva_config_from_unet(weights.unet, weights.heads)
    if cva_config is None:
        raise CheckpointError(
            "the UNet has no cross-view attention (*.motion_modules.*) weights: a stage-1 checkpoint; "
            "give the stage-2/end-to-end UNet or a motion_module-N.pth file"
        )
    with torch.device("meta"):
        unet = IMAGPoseUNet(**config, cva_config=cva_config)
        pose_guider = PoseGuider(**PoseGuider.config_from_state_dict(weights.pose_guider))
        patch_embed = PatchEmbedding(**PatchEmbedding.config_from_state_dict(weights.patch_embed))
    model = IMAGPoseModel(unet, pose_guider, patch_embed)
    state_dict = {f"{part}.{k}": v for part in PARTS for k, v in getattr(weights, part).items()}
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights do not fit an IMAGPose model: {str(error)[:800]}") from error
    return model.to(dtype).eval()


def pack_config(model: IMAGPoseModel) -> dict:
    return {
        "heads": model.unet.config.attention_head_dim,
        "unet": dict(model.unet.config),
        "cva": model.unet.cva_config,
        "pose_guider": model.pose_guider.config,
        "patch_embed": model.patch_embed.config,
    }


def save_pack(model: IMAGPoseModel, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the single-file format of a model (see write_pack)."""
    return write_pack(model.state_dict(), pack_config(model), path, extra_metadata)


def write_pack(state_dict: dict[str, torch.Tensor], config: dict, path: str | os.PathLike,
               extra_metadata: dict[str, str] | None = None) -> Path:
    """Pack-layout tensors + pack_config -> the single-file format, atomically (a temp file renamed into place)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {"format": PACK_FORMAT, "version": PACK_VERSION, "config": json.dumps(config, default=list)}
    metadata.update(extra_metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=metadata)
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return path


AUTHORS_NAMES = (("unet", "denoising_unet"), ("pose_guider", "pose_guider"), ("patch_embed", "patch"))


def save_authors_format(model: IMAGPoseModel, folder: str | os.PathLike, step: int = 1) -> list[Path]:
    """The authors' layout: denoising_unet-N.pth (UNet incl. motion modules), pose_guider-N.pth, patch-N.pth."""
    return write_authors_format(model.state_dict(), folder, step)


def write_authors_format(state_dict: dict[str, torch.Tensor], folder: str | os.PathLike, step: int = 1) -> list[Path]:
    """Pack-layout tensors -> the authors' three torch.save files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = split_pack(state_dict)
    written = []
    for part, name in AUTHORS_NAMES:
        path = folder / f"{name}-{step}.pth"
        torch.save({k: v.detach().cpu() for k, v in parts[part].items()}, path)
        written.append(path)
    return written

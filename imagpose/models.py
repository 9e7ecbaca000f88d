"""The model files the pack needs, fetched for the user from the Hugging Face Hub into ComfyUI's models folder.

    python -m imagpose.models list                          # what goes where, and what is there already
    python -m imagpose.models fetch                         # DINOv2-base, the SD VAE (ft-MSE), DWPose
    python -m imagpose.models fetch dinov2 dwpose           # some of them
    python -m imagpose.models fetch imagpose --repo USER/REPO [--file imagpose.safetensors ...]
    options: --models-dir DIR (default: the ComfyUI models folder this pack sits in), --revision REV

Downloads go through huggingface_hub (progress bars; a dropped connection is resumed with an HTTP Range request;
HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured), into a hidden folder next to the destination, and are
moved into place only after their checksum matched the Hub's: the sha256 the Hub gives for large (LFS) files,
the git blob hash for small ones. A file already in place is left alone. Nothing is ever downloaded unless asked:
this command, or ComfyUI started with IMAGPOSE_FETCH_MODELS=1 (see imagpose.comfyui.fetching).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .pose.dwpose import DET_FILENAME, POSE_FILENAME

@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str  # in the repository
    destination: str  # relative to ComfyUI's models folder

    def url(self, revision: str = "main") -> str:
        """Where the file is downloaded from (HF_ENDPOINT, if set, in place of the Hub)."""
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{self.repo_id}/resolve/{revision}/{self.filename}"


@dataclass(frozen=True)
class Model:
    name: str
    what: str
    files: tuple[HubFile, ...]


DINOV2_FOLDER = "dinov2-base"  # under models/imagpose: the name the shipped workflows use
VAE_NAME = "vae-ft-mse-840000-ema-pruned.safetensors"  # under models/vae: the name the shipped workflows use
MODELS = {
    "dinov2": Model("dinov2", "facebook/dinov2-base, the image encoder of the FLC (IMAGPose Image Encoder Loader)", (
        HubFile("facebook/dinov2-base", "config.json", f"imagpose/{DINOV2_FOLDER}/config.json"),
        HubFile("facebook/dinov2-base", "model.safetensors", f"imagpose/{DINOV2_FOLDER}/model.safetensors"),
    )),
    # diffusers layout of the ft-MSE VAE; ComfyUI's Load VAE reads it under the original file's name
    "vae": Model("vae", "stabilityai/sd-vae-ft-mse, the SD1.5 VAE (Load VAE)", (
        HubFile("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors", f"vae/{VAE_NAME}"),
    )),
    "dwpose": Model("dwpose", "yzd-v/DWPose, the pose detector IMAGPose's training data used (needs onnxruntime)", (
        HubFile("yzd-v/DWPose", DET_FILENAME, f"imagpose/dwpose/{DET_FILENAME}"),
        HubFile("yzd-v/DWPose", POSE_FILENAME, f"imagpose/dwpose/{POSE_FILENAME}"),
    )),
}
STANDARD = ("dinov2", "vae", "dwpose")


class FetchError(RuntimeError):
    """A file that could not be fetched; the message says which, why, and where to put it by hand."""


def imagpose_files(repo_id: str, filenames: list[str]) -> tuple[HubFile, ...]:
    """IMAGPose weights from a repository the user names (there is no official one): one file goes into
    models/imagpose/, several (the authors' denoising_unet-N.pth, pose_guider-N.pth, patch-N.pth) into
    models/imagpose/<repository name>/, a folder the Model Loader loads as a whole."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise FetchError(f"--repo must name a Hugging Face repository as USER/NAME, got {repo_id!r}")
    folder = "imagpose" if len(filenames) == 1 else f"imagpose/{repo_id.split('/')[1]}"
    return tuple(HubFile(repo_id, name, f"{folder}/{Path(name).name}") for name in filenames)


def default_models_dir() -> Path | None:
    """ComfyUI's models folder when this pack sits in ComfyUI/custom_nodes/<pack>/."""
    pack = Path(__file__).resolve().parents[1]
    if pack.parent.name == "custom_nodes" and (pack.parent.parent / "models").is_dir():
        return pack.parent.parent / "models"
    return None


def offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def by_hand(file: HubFile, models_dir: Path, revision: str = "main") -> str:
    return f"download {file.url(revision)} and save it as {models_dir / file.destination}"


def git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, etag: str | None, size: int | None) -> None:
    """The Hub's ETag is the file's sha256 for LFS files and its git blob sha1 otherwise; refuse anything else."""
    if size is not None and path.stat().st_size != size:
        raise FetchError(f"{path.name}: got {path.stat().st_size} bytes, the Hub announced {size}")
    etag = (etag or "").strip('"').removeprefix("W/").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        got, kind = sha256(path), "sha256"
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        got, kind = git_blob_sha1(path), "git blob sha1"
    else:
        raise FetchError(f"{path.name}: the Hub gave no checksum to verify the download against (ETag {etag!r})")
    if got != etag:
        raise FetchError(f"{path.name}: {kind} {got} does not match the Hub's {etag}: the download is corrupt")


def fetch_file(file: HubFile, models_dir: Path, revision: str = "main") -> Path:
    """One file into place (checked, atomic); an existing file is kept."""
    target = models_dir / file.destination
    if target.is_file():
        return target
    if offline():
        raise FetchError(f"HF_HUB_OFFLINE is set, so {file.repo_id}/{file.filename} was not fetched; "
                         + by_hand(file, models_dir, revision))
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    staging = target.parent / f".{target.name}.download"  # same file system: the final move is a rename
    try:
        meta = get_hf_file_metadata(hf_hub_url(file.repo_id, file.filename, revision=revision))
        downloaded = Path(hf_hub_download(file.repo_id, file.filename, revision=meta.commit_hash or revision,
                                          local_dir=staging))
        verify(downloaded, meta.etag, meta.size)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(downloaded, target)
    except FetchError as error:
        raise FetchError(f"{error}; nothing was saved. Try again, or {by_hand(file, models_dir, revision)}") from error
    except Exception as error:  # HTTP, network and file errors of huggingface_hub and its HTTP client
        kind = type(error).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError"):
            raise FetchError(f"no repository {file.repo_id} at {file.url(revision).split('/' + file.repo_id)[0]} "
                             "(or it is private or gated: set HF_TOKEN)") from error
        if "EntryNotFound" in kind or kind == "RevisionNotFoundError":
            raise FetchError(f"{file.repo_id} has no file {file.filename} at revision {revision}") from error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else kind
        raise FetchError(f"could not fetch {file.repo_id}/{file.filename} ({kind}: {detail}); "
                         + by_hand(file, models_dir, revision)) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch(files: tuple[HubFile, ...], models_dir: Path, revision: str = "main", say=print) -> list[Path]:
    done = []
    for file in files:
        target = models_dir / file.destination
        if target.is_file():
            say(f"present  {target}")
        else:
            say(f"fetching {file.repo_id}/{file.filename} -> {target}")
            fetch_file(file, models_dir, revision)
            say(f"saved    {target}")
        done.append(target)
    return done


def missing(names: tuple[str, ...], models_dir: Path) -> list[HubFile]:
    return [f for name in names for f in MODELS[name].files if not (models_dir / f.destination).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagpose.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="what can be fetched, where it goes, whether it is there")
    get = sub.add_parser("fetch", help="fetch models (default: dinov2 vae dwpose)")
    get.add_argument("names", nargs="*", metavar="NAME", help=f"{', '.join(MODELS)} or imagpose (with --repo)")
    get.add_argument("--repo", help="for imagpose: the Hugging Face repository holding IMAGPose weights")
    get.add_argument("--file", action="append", dest="files",
                     help="for imagpose: a file in that repository (repeat for the authors' three files; "
                          "default imagpose.safetensors)")
    get.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    for command in (listing, get):
        command.add_argument("--models-dir", type=Path, default=default_models_dir(),
                             help="ComfyUI's models folder (default: the one this pack is installed under)")
    args = parser.parse_args(argv)
    if args.models_dir is None:
        parser.error("this pack is not inside ComfyUI/custom_nodes/: say where ComfyUI's models folder is "
                     "with --models-dir")
    models_dir = args.models_dir.resolve()
    if args.command == "list":
        for model in MODELS.values():
            print(f"{model.name}: {model.what}")
            for file in model.files:
                state = "present" if (models_dir / file.destination).is_file() else "missing"
                print(f"  {state:8} {models_dir / file.destination}  <- {file.url()}")
        return 0
    names = args.names or list(STANDARD)
    unknown = [n for n in names if n not in (*MODELS, "imagpose")]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: choose from {', '.join(MODELS)}, imagpose")
    files: list[HubFile] = []
    try:
        for name in names:
            files += imagpose_files(args.repo, args.files or ["imagpose.safetensors"]) if name == "imagpose" \
                else MODELS[name].files
        fetch(tuple(files), models_dir, args.revision)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

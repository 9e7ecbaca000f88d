"""Photos -> poses: backend choice, image conversion, batches, person selection, rendering to tensors."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import dwpose, mediapipe_backend
from .errors import NoPersonFound, PoseBackendUnavailable
from .keypoints import PoseFrame, select_people
from .render import render_frame

DETECTORS = ("auto", "dwpose", "mediapipe")
PERSON_CHOICES = ("largest", "most_confident", "all")
PERSON_OPTIONS = (*PERSON_CHOICES, "by_index")  # what a UI offers: by_index goes with a person index
ON_NO_PERSON = ("error", "empty")
MIN_SIDE = 8  # images smaller than this (in either side) cannot show a person
Progress = Callable[[int, int], None] | None


def as_batch(images):
    """ComfyUI IMAGE (B, H, W, C) (torch or numpy; also (H, W, C) or (B, H, W)) as a (B, H, W, C) view, not copied."""
    arr = images.detach() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype == object:
        raise ValueError("expected an image tensor, got a ragged or object array")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None] if arr.shape[-1] in (1, 2, 3, 4) else arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected images shaped (batch, height, width, channels), got shape {tuple(arr.shape)}")
    return arr


def to_uint8_images(images) -> np.ndarray:
    """ComfyUI IMAGE (B, H, W, C) float [0, 1] (torch or numpy; also (H, W, C) or (B, H, W)) -> uint8
    (B, H, W, 3) RGB. One channel is repeated; two (gray + alpha) keep the gray; four (RGBA) drop alpha."""
    arr = as_batch(images)
    if hasattr(arr, "numpy"):
        arr = arr.to("cpu").float().numpy()
    channels = arr.shape[-1]
    if channels in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    elif channels == 4:
        arr = arr[..., :3]
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 colour channels, got {channels} (shape {tuple(arr.shape)})")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def person_selector(option: str, index: int = 0) -> "str | int":
    """A PERSON_OPTIONS choice (+ index for by_index) as `select_people` takes it."""
    if option not in PERSON_OPTIONS:
        raise ValueError(f"person must be one of {', '.join(PERSON_OPTIONS)}, got {option!r}")
    return int(index) if option == "by_index" else option


def check_output_size(width: int | None, height: int | None) -> None:
    """An output size is both sides or neither (then each pose's own canvas)."""
    if (width is None) != (height is None):
        raise ValueError(f"give both width and height, or neither; got {width}x{height}")


def get_backend(detector: str = "auto", model_dirs: Sequence[str] | None = None, device_id: int = 0):
    """The backend object for 'auto' (DWPose when its two ONNX files are found, else MediaPipe),
    'dwpose' or 'mediapipe'. Raises PoseBackendUnavailable with install/download instructions.
    device_id: the GPU DWPose runs on when onnxruntime has CUDA."""
    detector = (detector or "auto").lower()
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if detector in ("auto", "dwpose"):
        det, pose = dwpose.find_model_files(model_dirs)
        if det and pose:
            try:
                return dwpose.DWPoseBackend(det, pose, device_id)
            except PoseBackendUnavailable:
                if detector == "dwpose":
                    raise
        elif detector == "dwpose":
            raise PoseBackendUnavailable(dwpose.missing_files_message(model_dirs, det, pose))
    try:
        return mediapipe_backend.MediaPipeBackend()
    except PoseBackendUnavailable as error:
        if detector == "mediapipe":
            raise
        det, pose = dwpose.find_model_files(model_dirs)
        raise PoseBackendUnavailable(
            "No pose detector is available. Either install MediaPipe (" + mediapipe_backend.INSTALL_HINT
            + "), or install onnxruntime and provide the DWPose files: "
            + dwpose.missing_files_message(model_dirs, det, pose)
        ) from error


def extract_poses(
    images,
    detector: str = "auto",
    include_hands: bool = False,
    include_face: bool = False,
    person: "str | int" = "largest",
    model_dirs: Sequence[str] | None = None,
    on_missing: str = "error",
    progress: Progress = None,
    backend=None,
) -> list[PoseFrame]:
    """Detect poses on every image of a batch. Returns one PoseFrame per image (canvas = image size).

    on_missing: 'error' raises NoPersonFound naming the image index; 'empty' returns a frame with no people.
    progress: called as progress(done, total) after each image.
    """
    if on_missing not in ON_NO_PERSON:
        raise ValueError(f"on_missing must be one of {', '.join(ON_NO_PERSON)}, got {on_missing!r}")
    batch = as_batch(images)
    if batch.shape[0] == 0:
        return []
    if backend is None:
        backend = get_backend(detector, model_dirs)
    frames = []
    total = batch.shape[0]
    for index in range(total):
        rgb = to_uint8_images(batch[index : index + 1])[0]  # one at a time: the float temporaries of a whole batch add up
        h, w = rgb.shape[:2]
        if h < MIN_SIDE or w < MIN_SIDE or int(rgb.max()) == int(rgb.min()):
            people = []
            reason = f"the image is {w}x{h} px" if (h < MIN_SIDE or w < MIN_SIDE) else "the image is blank (one flat colour)"
        else:
            people = select_people(backend(rgb, include_hands=include_hands, include_face=include_face), person)
            reason = f"the {backend.name} detector found nobody"
        if not people and on_missing == "error":
            raise NoPersonFound(
                f"no person found in image {index} of the batch ({reason}); use a photo showing a person, "
                "or try the other detector", index=index,
            )
        frames.append(PoseFrame(w, h, people))
        if progress is not None:
            progress(index + 1, total)
    return frames


def render_pose_images(
    frames: Sequence[PoseFrame],
    width: int | None = None,
    height: int | None = None,
    include_hands: bool = True,
    include_face: bool = False,
    progress: Progress = None,
):
    """Render PoseFrames to a ComfyUI IMAGE tensor (B, H, W, 3) float [0, 1]. Without width/height each
    frame is drawn at its canvas size, which must then be the same for all frames."""
    import torch

    frames = list(frames)
    height, width = output_size(frames, width, height)
    out = torch.empty((len(frames), height, width, 3), dtype=torch.float32)  # filled a frame at a time
    for i, frame in enumerate(frames):
        out[i] = torch.from_numpy(render_frame(frame, width, height, include_hands=include_hands,
                                               include_face=include_face))
        out[i] /= 255.0
        if progress is not None:
            progress(i + 1, len(frames))
    return out


def output_size(frames: Sequence[PoseFrame], width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """(height, width) that render_pose_images draws: the size given, or the frames' one canvas size."""
    check_output_size(width, height)
    if width is not None:
        return height, width
    sizes = {(f.width, f.height) for f in frames}
    if len(sizes) > 1:
        listed = sorted(f"{w}x{h}" for w, h in sizes)
        raise ValueError(f"the poses have different canvas sizes ({', '.join(listed)}); give a width and height")
    (width, height), = sizes or {(64, 64)}
    return height, width


def extract_pose_images(
    images,
    detector: str = "auto",
    include_hands: bool = False,
    include_face: bool = False,
    person: "str | int" = "largest",
    model_dirs: Sequence[str] | None = None,
    progress: Progress = None,
):
    """Photos (ComfyUI IMAGE, (B, H, W, C) float [0, 1]) -> rendered DWPose-style pose images of the same
    (B, H, W, 3) shape, float [0, 1]. Raises NoPersonFound (a ValueError) naming the image index when an
    image shows nobody, PoseBackendUnavailable (a RuntimeError) when no detector can run."""
    frames = extract_poses(images, detector, include_hands, include_face, person, model_dirs,
                           on_missing="error", progress=progress)
    if not frames:
        import torch

        batch = as_batch(images)
        return torch.zeros((*batch.shape[:3], 3), dtype=torch.float32)
    return render_pose_images(frames, include_hands=include_hands, include_face=include_face)

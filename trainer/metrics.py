"""SSIM, LPIPS and FID exactly as the PCDMs metric script computes them (the script IMAGPose's numbers follow).

- Images: read as float32 0-255, OpenCV bicubic resize to the metric size without clipping, / 255.
- SSIM: scikit-image `structural_similarity` on 0-255 values, Gaussian window sigma 1.2, population covariance,
  per colour channel then averaged, `data_range` = max - min of the generated image.
- LPIPS: the `lpips` package, AlexNet, v0.1 linear layers (shipped in its wheel). Two feeds, both recorded: `pcdms`
  (0-1 inputs passed as they are, so the package treats them as -1..1: what PCDMs did) and `standard` (-1..1).
- FID: torchvision's ImageNet Inception-v3 (`inception_v3_google-0cc3c7bd.pth`), 0-1 input, bilinear to 299x299,
  then per channel x * std / 0.5 + (mean - 0.5) / 0.5 with ImageNet mean/std, 2048-d pool features; statistics are
  accumulated image by image (float64 sums), never a whole folder in memory; the Frechet distance's
  Tr(sqrtm(S1 S2)) from a symmetric eigen-decomposition (the number scipy's sqrtm gives, without its minutes on a
  2048 x 2048 product or its singular-matrix fallback).

Backbone weights are read from a local folder only; a missing file is an error naming it and where to put it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
WEIGHT_URLS = {INCEPTION_FILE: "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
               ALEXNET_FILE: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"}
INCEPTION_UNUSED = ("AuxLogits.", "fc.")  # the classifier heads: not used for pool features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_FEEDS = ("pcdms", "standard")
FEATURES = 2048


class MetricError(ValueError):
    """Missing or unusable metric weights or images; the message names the file."""


def default_weights_dir() -> Path:
    """Where torchvision caches its downloads ($TORCH_HOME/hub/checkpoints): files put there by an earlier run work."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(folder: str | os.PathLike, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise MetricError(f"metric weights {path} not found: nothing is downloaded at run time. Put torchvision's "
                          f"{name} ({WEIGHT_URLS[name]}) in {Path(folder)} (or pass --metric-weights DIR); files "
                          f"torchvision downloaded before are in {default_weights_dir()}")
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling, truncation, foreign formats: name the file
        raise MetricError(f"{path} could not be read as a torch state dict: {error}") from error
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MetricError(f"{path} does not hold a state dict of tensors")
    return {k: v.float() for k, v in state.items()}


def load_image(path: str | os.PathLike, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 at the metric size, ~0-1 (bicubic overshoot kept, as in the PCDMs script)."""
    import cv2
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as error:
        raise MetricError(f"image {path} could not be read ({error})") from error
    height, width = size_hw
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_CUBIC) / 255.0


def ssim(ground_truth: np.ndarray, generated: np.ndarray) -> float:
    """The PCDMs `ssim_256` value of one pair (arrays from load_image)."""
    from skimage.metrics import structural_similarity

    gt, pred = ground_truth * 255.0, generated * 255.0
    return float(structural_similarity(gt, pred, gaussian_weights=True, sigma=1.2, use_sample_covariance=False,
                                       channel_axis=2, data_range=float(pred.max() - pred.min())))


def to_batch(arrays: list[np.ndarray], device) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)


class LPIPS:
    """lpips.LPIPS(net='alex', version='0.1') with its AlexNet trunk read from a local torchvision file."""

    def __init__(self, weights_dir: str | os.PathLike, device="cpu"):
        import lpips

        path = weights_file(weights_dir, ALEXNET_FILE)
        features = {k[len("features."):]: v for k, v in read_weights(path).items() if k.startswith("features.")}
        with warnings.catch_warnings():  # lpips builds its trunk with torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)  # linear layers: wheel
        trunk = {}
        for name, module in self.model.net.named_children():  # slice1..5 hold torchvision's features.N layers
            for index, layer in module.named_children():
                for key in layer.state_dict():
                    trunk[f"{name}.{index}.{key}"] = features.get(f"{index}.{key}")
        missing = [k for k, v in trunk.items() if v is None]
        if missing:
            raise MetricError(f"{path} is not torchvision's AlexNet: features.* tensors missing (e.g. {missing[:2]})")
        try:
            self.model.net.load_state_dict(trunk, strict=True)
        except RuntimeError as error:
            raise MetricError(f"{path} does not fit AlexNet: {str(error)[:300]}") from error
        self.model = self.model.to(device).eval()
        self.device = device
        self.source = str(path)

    @torch.no_grad()
    def __call__(self, generated: list[np.ndarray], ground_truth: list[np.ndarray], feed: str) -> list[float]:
        if feed not in LPIPS_FEEDS:
            raise ValueError(f"LPIPS feed must be one of {LPIPS_FEEDS}, got {feed!r}")
        a, b = to_batch(generated, self.device), to_batch(ground_truth, self.device)
        if feed == "standard":
            a, b = a * 2 - 1, b * 2 - 1
        return self.model(a, b).flatten().double().cpu().tolist()


class InceptionFeatures(torch.nn.Module):
    """torchvision Inception-v3 pool features (2048) with the GFLA/PCDMs input normalisation."""

    def __init__(self, weights_dir: str | os.PathLike, device="cpu"):
        super().__init__()
        from torchvision.models import inception_v3

        path = weights_file(weights_dir, INCEPTION_FILE)
        state = {k: v for k, v in read_weights(path).items() if not k.startswith(INCEPTION_UNUSED)}
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        net.fc = torch.nn.Identity()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise MetricError(f"{path} is not torchvision's Inception-v3: {str(error)[:300]}") from error
        self.net = net.eval()
        self.source = str(path)
        scale = torch.tensor(IMAGENET_STD) / 0.5
        shift = (torch.tensor(IMAGENET_MEAN) - 0.5) / 0.5
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        self.to(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ~0-1 -> (B, 2048) float64."""
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = x * self.scale + self.shift
        net = self.net
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
                      net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                      net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b,
                      net.Mixed_7c, net.avgpool):
            x = layer(x)
        return x.flatten(1).double()


class FeatureStats:
    """Running count, sum and sum of outer products (float64): mean and sample covariance without storing features."""

    def __init__(self, dims: int = FEATURES):
        self.count = 0
        self.total = torch.zeros(dims, dtype=torch.float64)
        self.outer = torch.zeros(dims, dims, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        features = features.double().cpu()
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features

    def tensors(self) -> torch.Tensor:
        """Everything in one tensor, for summing over processes."""
        return torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])

    @classmethod
    def from_tensors(cls, flat: torch.Tensor, dims: int = FEATURES) -> "FeatureStats":
        stats = cls(dims)
        flat = flat.double().cpu()
        stats.count = int(round(float(flat[0])))
        stats.total = flat[1 : 1 + dims].clone()
        stats.outer = flat[1 + dims :].reshape(dims, dims).clone()
        return stats

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise MetricError(f"FID needs at least 2 images per set, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)  # np.cov's ddof=1
        return mean.numpy(), cov.numpy()


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding taken as 0)."""
    from scipy import linalg

    values, vectors = linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, root1: np.ndarray | None = None) -> float:
    """Tr(sqrtm(S1 S2)) for covariance matrices: the eigenvalues of S1 S2 are those of the symmetric
    sqrt(S1) S2 sqrt(S1), so it is the sum of their square roots. The same number as scipy's sqrtm (tested), in
    seconds instead of minutes at 2048 x 2048. `root1` = sqrt_psd(S1) when it is already known."""
    from scipy import linalg

    root = sqrt_psd((sigma1 + sigma1.T) / 2) if root1 is None else root1
    inner = root @ sigma2 @ root
    values = linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     root1: np.ndarray | None = None) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrt(S1 S2)): the Frechet distance of two Gaussians."""
    diff = mu1 - mu2
    trace = trace_sqrt_product(sigma1, sigma2, root1)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace)

"""SSIM, LPIPS and FID as the PCDMs script defines them, checked against independent computations.

The backbones are random-weight files under torchvision's file and key names (no download); what is checked is
that the code computes the protocol's function of whatever weights it is given.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer import metrics
from trainer.evaluate import used
from trainer.testing_files import write_metric_backbones

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metric-weights")
    write_metric_backbones(folder)
    return folder


def images(seed: int, count: int = 2, size=(64, 44)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random((size[0], size[1], 3)).astype(np.float32)
    return [np.clip(base + 0.1 * i * rng.standard_normal(base.shape).astype(np.float32), 0, 1) for i in range(count)]


def gaussian_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM written out: 9-tap Gaussian (sigma 1.2, truncated at 3.5 sigma), population moments, 4 px border cut,
    per channel, averaged."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        blur = lambda z: gaussian_filter(z, sigma=1.2, truncate=3.5, mode="reflect")  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s[4:-4, 4:-4].mean())
    return float(np.mean(values))


def test_ssim_is_the_protocols_gaussian_ssim():
    truth, generated = images(0)
    expected = gaussian_ssim(truth * 255, generated * 255, float(generated.max() - generated.min()) * 255)
    assert abs(metrics.ssim(truth, generated) - expected) < 1e-6
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
    # data range from the generated image, not 255: a low-contrast prediction scores differently
    dim = generated * 0.5
    assert abs(metrics.ssim(truth, dim) - gaussian_ssim(truth * 255, dim * 255, float(dim.max() - dim.min()) * 255)) < 1e-6


def test_images_are_resized_bicubic_on_floats_without_clipping(tmp_path):
    import cv2
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = (rng.random((110, 75, 3)) > 0.5).astype(np.uint8) * 255  # hard edges: bicubic overshoots
    Image.fromarray(pixels).save(tmp_path / "edges.png")
    loaded = metrics.load_image(tmp_path / "edges.png", (256, 176))
    assert loaded.shape == (256, 176, 3) and loaded.dtype == np.float32
    expected = cv2.resize(pixels.astype(np.float32), (176, 256), interpolation=cv2.INTER_CUBIC) / 255.0
    assert np.array_equal(loaded, expected)
    assert loaded.min() < 0 and loaded.max() > 1, "the overshoot must be kept, as in the PCDMs script"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(metrics.MetricError, match="broken.png could not be read"):
        metrics.load_image(tmp_path / "broken.png", (256, 176))


def test_lpips_uses_the_alexnet_file_and_both_feeds(weights):
    import lpips
    from torchvision.models import alexnet

    model = metrics.LPIPS(weights)
    net = alexnet(weights=None)
    state = torch.load(weights / metrics.ALEXNET_FILE, weights_only=True)
    net.features.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    x = torch.rand(2, 3, 64, 44) * 2 - 1
    trunk = model.model.net(x)  # lpips' five AlexNet slices = torchvision's features at relu1..relu5
    reference, taps = [], (1, 4, 7, 9, 11)
    h = x
    for index, layer in enumerate(list(net.features.eval())[: taps[-1] + 1]):
        h = layer(h)
        if index in taps:
            reference.append(h)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(trunk, reference))

    generated, truth = images(2, 2), images(3, 2)
    pcdms, standard = model(generated, truth, "pcdms"), model(generated, truth, "standard")
    a, b = metrics.to_batch(generated, "cpu"), metrics.to_batch(truth, "cpu")
    with torch.no_grad():
        assert np.allclose(pcdms, model.model(a, b).flatten().numpy(), atol=1e-6)  # 0-1 passed as if -1..1
        assert np.allclose(standard, model.model(a, b, normalize=True).flatten().numpy(), atol=1e-6)
    assert not np.allclose(pcdms, standard), "the two feeds differ, which is why both are recorded"
    assert model(truth, truth, "standard") == pytest.approx([0.0, 0.0], abs=1e-6)
    assert isinstance(model.model, lpips.LPIPS) and model.model.version == "0.1"


def test_inception_features_are_torchvisions_pool_features_after_the_gfla_normalisation(weights):
    from torchvision.models import inception_v3

    features = metrics.InceptionFeatures(weights)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    state = torch.load(weights / metrics.INCEPTION_FILE, weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}, strict=False)
    net.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 44)
    resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = torch.stack([resized[:, c] * (std[c] / 0.5) + (mean[c] - 0.5) / 0.5 for c in range(3)], dim=1)
    with torch.no_grad():
        expected = net.eval()(normalised).double()
    got = features(x)
    assert got.shape == (2, metrics.FEATURES)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert got.std(0).mean() > 0, "random backbones must still tell images apart"


def test_streamed_statistics_equal_numpys_and_add_up_over_processes():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((50, 6))
    whole, first, second = metrics.FeatureStats(6), metrics.FeatureStats(6), metrics.FeatureStats(6)
    whole.add(torch.from_numpy(feats))
    first.add(torch.from_numpy(feats[:20]))
    second.add(torch.from_numpy(feats[20:]))
    merged = metrics.FeatureStats.from_tensors(first.tensors() + second.tensors(), 6)  # what a sum-reduce gives
    for stats in (whole, merged):
        mean, cov = stats.mean_cov()
        assert np.allclose(mean, feats.mean(0)) and np.allclose(cov, np.cov(feats, rowvar=False))
    single = metrics.FeatureStats(6)
    single.add(torch.zeros(1, 6))
    with pytest.raises(metrics.MetricError, match="at least 2"):
        single.mean_cov()


def test_frechet_trace_equals_the_scripts_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(5)
    for dims, samples in ((64, 500), (64, 40)):  # full rank, and rank-deficient as with few images
        a, b = rng.standard_normal((samples, dims)), rng.standard_normal((samples, dims)) * 1.5 + 0.3
        s1, s2 = np.cov(a, rowvar=False), np.cov(b @ rng.standard_normal((dims, dims)) / 8, rowvar=False)
        reference = linalg.sqrtm(s1.dot(s2))  # the PCDMs script's way
        reference = np.trace(reference.real)
        assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-6, abs=1e-6)
        root = metrics.sqrt_psd(s1)  # computed once per real set, shared by the modes
        assert metrics.trace_sqrt_product(s1, s2, root) == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 1 + 4 + sum((np.sqrt(a) - np.sqrt(b)) ** 2 for a, b in ((1, 4), (4, 4), (9, 1)))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_missing_weights_name_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(metrics.MetricError) as error:
        metrics.InceptionFeatures(tmp_path)
    message = str(error.value)
    assert str(tmp_path / metrics.INCEPTION_FILE) in message and "nothing is downloaded" in message
    assert "download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in message
    (tmp_path / metrics.ALEXNET_FILE).write_bytes(b"not a torch file")
    with pytest.raises(metrics.MetricError, match="alexnet-owt-7be5be79.pth could not be read"):
        metrics.LPIPS(tmp_path)


def test_batch_remainders_as_the_pcdms_script():
    assert used(8570, 64, "drop") == 8512 and used(8570, 128, "drop") == 8448 and used(48674, 128, "drop") == 48640
    assert used(8570, 64, "keep") == 8570
    assert used(6, 64, "drop") == 6  # a batch larger than the set shrinks to it, as in the script

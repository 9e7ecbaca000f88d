"""`python -m imagpose.models fetch` against a stand-in of the Hugging Face Hub on 127.0.0.1 (tests/harness/hub.py),
through the installed huggingface_hub: right folders, resumed transfers, checksums, HF_ENDPOINT / HF_HUB_OFFLINE."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.hub import StandInHub

REPO = Path(__file__).resolve().parents[1]
DWPOSE = {"yolox_l.onnx": os.urandom(700_000), "dw-ll_ucoco_384.onnx": os.urandom(300_000)}
DINOV2 = {"config.json": b'{"model_type": "dinov2"}\n', "model.safetensors": os.urandom(12_000_000)}
VAE = {"diffusion_pytorch_model.safetensors": os.urandom(1_000_000), "config.json": b"{}"}
STANDARD_REPOS = {"facebook/dinov2-base": DINOV2, "stabilityai/sd-vae-ft-mse": VAE, "yzd-v/DWPose": DWPOSE}
WHERE = {  # destination under models/ -> bytes
    "imagpose/dinov2-base/config.json": DINOV2["config.json"],
    "imagpose/dinov2-base/model.safetensors": DINOV2["model.safetensors"],
    "vae/vae-ft-mse-840000-ema-pruned.safetensors": VAE["diffusion_pytorch_model.safetensors"],
    "imagpose/dwpose/yolox_l.onnx": DWPOSE["yolox_l.onnx"],
    "imagpose/dwpose/dw-ll_ucoco_384.onnx": DWPOSE["dw-ll_ucoco_384.onnx"],
}


def run_fetch(args, models, hub=None, tmp=None, offline=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.endpoint
    return subprocess.run([sys.executable, "-m", "imagpose.models", *args, "--models-dir", str(models)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def leftovers(models: Path) -> list[str]:
    return [str(p) for p in models.rglob(".*.download")]


def test_fetch_puts_every_file_where_the_loaders_look_and_resumes(tmp_path):
    models = tmp_path / "models"
    with StandInHub(STANDARD_REPOS) as hub:
        hub.drop_after["model.safetensors"] = 11_000_000  # the connection breaks after the first 10 MB chunk
        done = run_fetch(["fetch"], models, hub, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        for destination, data in WHERE.items():
            assert (models / destination).read_bytes() == data, destination
        ranges = hub.gets("model.safetensors")
        assert ranges[0] is None and any(r and r.startswith("bytes=") and int(r[6:].split("-")[0]) > 0
                                         for r in ranges[1:]), f"no resumed GET: {ranges}"
        assert not leftovers(models)
        asked = len(hub.requests)
        again = run_fetch(["fetch"], models, hub, tmp_path)
        assert again.returncode == 0 and again.stdout.count("present") == len(WHERE), again.stdout
        assert len(hub.requests) == asked, "files already in place were fetched again"


def test_corrupt_download_is_refused_and_nothing_is_left(tmp_path):
    models = tmp_path / "models"
    with StandInHub(STANDARD_REPOS) as hub:
        hub.corrupt.add("yolox_l.onnx")
        done = run_fetch(["fetch", "dwpose"], models, hub, tmp_path)
    assert done.returncode == 1
    assert "sha256" in done.stderr and "does not match" in done.stderr, done.stderr
    assert "yolox_l.onnx" in done.stderr and str(models / "imagpose" / "dwpose" / "yolox_l.onnx") in done.stderr
    assert not (models / "imagpose" / "dwpose" / "yolox_l.onnx").exists() and not leftovers(models)


def test_offline_names_the_file_and_the_place_without_a_request(tmp_path):
    models = tmp_path / "models"
    with StandInHub(STANDARD_REPOS) as hub:
        done = run_fetch(["fetch", "vae"], models, hub, tmp_path, offline=True)
        assert hub.requests == []
    assert done.returncode == 1
    assert "HF_HUB_OFFLINE" in done.stderr
    assert f"{hub.endpoint}/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors" in done.stderr
    assert str(models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors") in done.stderr


def test_imagpose_weights_from_a_named_repository(tmp_path):
    from imagpose.checkpoints import load_weights, save_authors_format, save_pack
    from imagpose.testing import make_tiny_model

    model = make_tiny_model()
    pack = save_pack(model, tmp_path / "src" / "imagpose.safetensors")
    authors = save_authors_format(model, tmp_path / "src" / "authors", step=9)
    repos = {"someone/imagpose-weights": {"imagpose.safetensors": pack.read_bytes(),
                                          **{p.name: p.read_bytes() for p in authors}}}
    models = tmp_path / "models"
    with StandInHub(repos) as hub:
        single = run_fetch(["fetch", "imagpose", "--repo", "someone/imagpose-weights"], models, hub, tmp_path)
        assert single.returncode == 0, single.stderr[-2000:]
        files = [a for p in authors for a in ("--file", p.name)]
        several = run_fetch(["fetch", "imagpose", "--repo", "someone/imagpose-weights", *files], models, hub, tmp_path)
        assert several.returncode == 0, several.stderr[-2000:]
        unknown = run_fetch(["fetch", "imagpose", "--repo", "someone/nothing-here"], tmp_path / "other", hub, tmp_path)
    assert (models / "imagpose" / "imagpose.safetensors").read_bytes() == pack.read_bytes()
    folder = models / "imagpose" / "imagpose-weights"  # the authors' three files: a folder the loader loads
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in authors)
    assert load_weights(folder).sources["unet"] == "denoising_unet-9.pth"
    assert unknown.returncode == 1 and "no repository someone/nothing-here" in unknown.stderr, unknown.stderr


@pytest.mark.parametrize("args,message", [
    (["fetch", "clip"], "unknown model"),
    (["fetch", "imagpose", "--repo", "no slash"], "USER/NAME"),
])
def test_bad_requests_are_named(tmp_path, args, message):
    done = run_fetch(args, tmp_path / "models", None, tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr

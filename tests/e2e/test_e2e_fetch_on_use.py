"""Models fetched for the user on first use, on a real server started with IMAGPOSE_FETCH_MODELS=1 and HF_ENDPOINT
pointing at a stand-in of the Hub (tests/harness/hub.py): the shipped workflow runs on a models folder that holds
only the IMAGPose checkpoint. (Without the opt-in nothing is fetched: every other e2e server runs without it.)"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from harness import (
    MAIN_WORKFLOW,
    ComfyServer,
    cached_nodes,
    load_workflow,
    make_base_dir,
    nodes_of_type,
    saved_images,
    set_inputs,
    ui_to_api,
    write_inputs,
)
from harness.hub import StandInHub
from harness.pose_fixtures import fake_dwpose_files
from test_e2e_workflows import CELL_H, CELL_W


@pytest.fixture(scope="module")
def hub(test_models, tmp_path_factory):
    dinov2 = test_models / "imagpose" / "tiny-dinov2"
    repos = {
        "facebook/dinov2-base": {p.name: p.read_bytes() for p in dinov2.iterdir()},
        "stabilityai/sd-vae-ft-mse": {
            "diffusion_pytorch_model.safetensors": (test_models / "vae" / "tiny-vae.safetensors").read_bytes()},
        "yzd-v/DWPose": fake_dwpose_files(tmp_path_factory.mktemp("dwpose")),
    }
    with StandInHub(repos) as stand_in:
        yield stand_in


def test_missing_models_are_fetched_on_first_use_with_the_opt_in(hub, test_models, tmp_path, timings):
    pytest.importorskip("onnxruntime", reason="DWPose (fetched here) runs on onnxruntime, a test requirement")
    base = make_base_dir(tmp_path / "base")
    (base / "models" / "imagpose").mkdir(parents=True)
    os.link(test_models / "imagpose" / "tiny-imagpose.safetensors", base / "models" / "imagpose" / "imagpose.safetensors")
    write_inputs(base / "input")
    env = {"IMAGPOSE_FETCH_MODELS": "1", "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    started = time.monotonic()
    with ComfyServer(base, env=env, startup_timeout=float(os.environ.get("IMAGPOSE_SERVER_STARTUP_TIMEOUT", "300"))) as server:
        vae = "vae-ft-mse-840000-ema-pruned.safetensors"
        deadline = time.monotonic() + 300
        while vae not in server.client.get("/object_info/VAELoader")["VAELoader"]["input"]["required"]["vae_name"][0]:
            assert time.monotonic() < deadline, f"the VAE was not fetched at start-up:\n{server.log_tail()}"
            time.sleep(1)
        timings["fetch on use: server start and background fetch"] = time.monotonic() - started
        models = base / "models"
        for path in ("imagpose/dinov2-base/config.json", "imagpose/dinov2-base/model.safetensors", f"vae/{vae}",
                     "imagpose/dwpose/yolox_l.onnx", "imagpose/dwpose/dw-ll_ucoco_384.onnx"):
            deadline = time.monotonic() + 120
            while not (models / path).is_file():
                assert time.monotonic() < deadline, f"{path} was not fetched:\n{server.log_tail()}"
                time.sleep(0.5)
        assert "IMAGPOSE_FETCH_MODELS is set: fetching dinov2, vae, dwpose" in server.log_text()

        # the shipped workflow with its own model names; the source poses come from the fetched DWPose
        info = server.client.object_info()
        prompt = ui_to_api(load_workflow(MAIN_WORKFLOW), info)
        set_inputs(prompt, "IMAGPoseFLCEncode", width=CELL_W, height=CELL_H)
        set_inputs(prompt, "IMAGPoseILCPack", width=CELL_W, height=CELL_H, source_pose_detector="dwpose")
        set_inputs(prompt, "KSampler", steps=2)
        history = server.client.run(prompt, timeout=900)
        assert len(saved_images(history)) == 3

        # first use by the loader itself: the encoder is gone, the next run fetches it again
        shutil.rmtree(models / "imagpose" / "dinov2-base")
        gets_before = len(hub.gets("model.safetensors"))
        history = server.client.run(prompt, timeout=900)
        assert len(saved_images(history)) == 3
        assert len(hub.gets("model.safetensors")) == gets_before + 1
        (encoder_id,) = nodes_of_type(prompt, "IMAGPoseImageEncoderLoader")
        assert encoder_id not in cached_nodes(history)
    timings["fetch on use: total"] = time.monotonic() - started

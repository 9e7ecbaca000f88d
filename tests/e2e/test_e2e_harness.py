"""The harness itself, proven on ComfyUI's stock nodes: UI->API conversion, /prompt, /history, outputs."""
from __future__ import annotations

import pytest

from harness import ComfyHTTPError, WorkflowError, image_stats, output_images, ui_to_api


def stock_workflow(width=64, height=96, prefix="harness"):
    """UI-format workflow (as the editor saves it): LoadImage -> Reroute -> ImageScale -> ImageInvert -> SaveImage."""
    return {
        "last_node_id": 6,
        "last_link_id": 4,
        "nodes": [
            {"id": 1, "type": "LoadImage", "pos": [0, 0], "size": [300, 300], "flags": {}, "order": 0, "mode": 0,
             "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                       {"name": "MASK", "type": "MASK", "links": None}],
             "properties": {}, "widgets_values": ["imagpose_source.png", "image"]},
            {"id": 2, "type": "Reroute", "pos": [320, 0], "size": [75, 26], "flags": {}, "order": 1, "mode": 0,
             "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [2]}], "properties": {}},
            {"id": 3, "type": "ImageScale", "pos": [420, 0], "size": [300, 130], "flags": {}, "order": 2, "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
             "properties": {}, "widgets_values": ["bilinear", width, height, "disabled"]},
            {"id": 4, "type": "ImageInvert", "pos": [740, 0], "size": [200, 30], "flags": {}, "order": 3, "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 3}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}], "properties": {}, "widgets_values": []},
            {"id": 5, "type": "SaveImage", "pos": [960, 0], "size": [300, 300], "flags": {}, "order": 4, "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 4}], "outputs": [],
             "properties": {}, "widgets_values": [prefix]},
            {"id": 6, "type": "Note", "pos": [0, 340], "size": [300, 100], "flags": {}, "order": 5, "mode": 0,
             "inputs": [], "outputs": [], "properties": {}, "widgets_values": ["a note for people"]},
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 4, 0, 5, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }


def test_convert_stock_workflow(object_info):
    prompt = ui_to_api(stock_workflow(), object_info)
    assert set(prompt) == {"1", "3", "4", "5"}, "Note and Reroute must not become prompt nodes"
    assert prompt["1"]["inputs"] == {"image": "imagpose_source.png"}
    assert prompt["3"]["inputs"] == {"image": ["1", 0], "upscale_method": "bilinear", "width": 64,
                                     "height": 96, "crop": "disabled"}
    assert prompt["5"]["inputs"] == {"images": ["4", 0], "filename_prefix": "harness"}


def test_convert_seed_widget_carries_control_value(object_info):
    node = {"id": 7, "type": "KSampler", "mode": 0, "inputs": [
        {"name": "model", "type": "MODEL", "link": 11}, {"name": "positive", "type": "CONDITIONING", "link": 12},
        {"name": "negative", "type": "CONDITIONING", "link": 13}, {"name": "latent_image", "type": "LATENT", "link": 14}],
        "widgets_values": [123, "fixed", 30, 2.0, "ddim", "simple", 1.0]}
    src = {"id": 8, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [], "widgets_values": ["x.safetensors"]}
    latent = {"id": 9, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "widgets_values": [64, 64, 1]}
    workflow = {"nodes": [node, src, latent], "links": [
        [11, 8, 0, 7, 0, "MODEL"], [12, 8, 1, 7, 1, "CONDITIONING"], [13, 8, 1, 7, 2, "CONDITIONING"],
        [14, 9, 0, 7, 3, "LATENT"]]}
    prompt = ui_to_api(workflow, object_info)
    assert prompt["7"]["inputs"] == {"seed": 123, "steps": 30, "cfg": 2.0, "sampler_name": "ddim",
                                     "scheduler": "simple", "denoise": 1.0, "model": ["8", 0],
                                     "positive": ["8", 1], "negative": ["8", 1], "latent_image": ["9", 0]}
    # without the control value the list is one short: must fail loudly, not shift values
    workflow["nodes"][0]["widgets_values"] = [123, 30, 2.0, "ddim", "simple", 1.0]
    with pytest.raises(WorkflowError, match="KSampler"):
        ui_to_api(workflow, object_info)


def test_convert_rejects_unknown_node_and_missing_link(object_info):
    workflow = stock_workflow()
    workflow["nodes"][3]["type"] = "NoSuchNodeType"
    with pytest.raises(WorkflowError, match="NoSuchNodeType"):
        ui_to_api(workflow, object_info)
    workflow = stock_workflow()
    workflow["nodes"][4]["inputs"][0]["link"] = None
    with pytest.raises(WorkflowError, match="required input 'images'"):
        ui_to_api(workflow, object_info)


def test_stock_prompt_runs_and_saves(comfy_server, object_info):
    prompt = ui_to_api(stock_workflow(64, 96, "harness_ok"), object_info)
    history = comfy_server.client.run(prompt, timeout=120)
    images = output_images(history, "5")
    assert len(images) == 1
    stats = image_stats(comfy_server.output_path(images[0]))
    assert (stats["width"], stats["height"]) == (64, 96)
    assert stats["finite"] and stats["std"] > 1.0


def test_stock_bad_prompt_rejected_then_server_still_works(comfy_server, object_info):
    bad = ui_to_api(stock_workflow(), object_info)
    bad["1"]["inputs"]["image"] = "no_such_file.png"
    with pytest.raises(ComfyHTTPError) as caught:
        comfy_server.client.queue_prompt(bad)
    assert caught.value.status == 400
    assert "no_such_file.png" in caught.value.body
    good = ui_to_api(stock_workflow(32, 32, "harness_after_error"), object_info)
    history = comfy_server.client.run(good, timeout=120)
    stats = image_stats(comfy_server.output_path(output_images(history, "5")[0]))
    assert (stats["width"], stats["height"]) == (32, 32)

"""Each loader lists only files of its own kind (told by content, cached), and its fingerprint follows the files."""
import os
import time

import pytest
import torch

from harness.model_zoo import remove_model_zoo, write_model_zoo
from imagpose import file_kinds
from imagpose.checkpoints import save_pack
from imagpose.testing import make_tiny_model


def schema_options(nodes, node_id):
    required = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]
    return {name: spec[1] for name, spec in required.items()}


@pytest.fixture
def zoo(comfy_nodes, tiny_models):
    root, _ = tiny_models
    expected = write_model_zoo(root, root)
    yield expected
    remove_model_zoo(root)


def test_each_list_shows_its_kind_only(comfy_nodes, zoo):
    loader = schema_options(comfy_nodes, "IMAGPoseModelLoader")
    encoder = schema_options(comfy_nodes, "IMAGPoseImageEncoderLoader")
    lists = {name: spec["options"] for name, spec in loader.items()}
    lists["image_encoder"] = encoder["image_encoder"]["options"]
    for widget, want in zoo.items():
        assert want["shown"] <= set(lists[widget]), (widget, sorted(want["shown"] - set(lists[widget])))
        assert not want["left_out"] & set(lists[widget]), (widget, sorted(want["left_out"] & set(lists[widget])))
    assert lists["motion_module"][0] == "none" and lists["pose_guider"][0] == lists["patch_embed"][0] == "auto"
    # the defaults are files of the right kind: a pack file first, a DINOv2 for the encoder
    assert loader["checkpoint"]["default"] == lists["checkpoint"][0]
    import folder_paths

    assert file_kinds.contents(folder_paths.get_full_path("imagpose", loader["checkpoint"]["default"])).kind == "pack"
    assert encoder["image_encoder"]["default"] in zoo["image_encoder"]["shown"]


def test_folder_holding_both_kinds_loads_in_both_loaders(comfy_nodes, zoo):
    from test_comfy_nodes import run_node

    model = run_node(comfy_nodes, "IMAGPoseModelLoader", "zoo-both", "none", "auto", "auto")[0]
    assert model.model.diffusion_model is not None
    from_folder = run_node(comfy_nodes, "IMAGPoseImageEncoderLoader", "zoo-both")[0]
    bare = run_node(comfy_nodes, "IMAGPoseImageEncoderLoader", "zoo-dinov2.safetensors")[0]  # models/imagpose
    pixels = torch.rand(1, 3, 64, 64)
    assert torch.equal(from_folder.encode(pixels), bare.encode(pixels))


def test_kinds_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = save_pack(make_tiny_model(), tmp_path / "a.safetensors")
    calls = []
    inspect = file_kinds._inspect
    monkeypatch.setattr(file_kinds, "_inspect", lambda p: calls.append(p) or inspect(p))
    assert file_kinds.contents(path).kind == "pack"
    assert file_kinds.contents(path).kind == "pack" and len(calls) == 1  # second look: from the cache
    path.write_bytes(b"garbage")  # replaced under the same name: looked at again
    assert file_kinds.contents(path).kind is None and len(calls) == 2


def test_fingerprint_follows_every_file_the_loader_reads(comfy_nodes, tiny_models):
    root, paths = tiny_models
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseModelLoader"]
    encoder = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseImageEncoderLoader"]
    pack = root / "imagpose" / "fingerprint-pack.safetensors"
    save_pack(make_tiny_model(), pack)
    folder = root / "imagpose" / "tiny-authors"
    try:
        def prints():
            return (loader.fingerprint_inputs("fingerprint-pack.safetensors", "none", "auto", "auto"),
                    loader.fingerprint_inputs("tiny-authors", "none", "auto", "auto"),
                    encoder.fingerprint_inputs("tiny-dinov2"))

        first = prints()
        assert first == prints(), "unchanged files must give the same fingerprint (ComfyUI reuses the cache)"
        assert [f[0] for f in first[0]] == [str(pack)], "a pack file alone is what the loader reads"
        assert {os.path.basename(f[0]) for f in first[1]} >= {"denoising_unet-1.pth", "pose_guider-1.pth", "patch-1.pth"}
        time.sleep(0.01)
        save_pack(make_tiny_model(seed=3), pack)  # same name, other weights
        second = prints()
        assert second[0] != first[0] and second[1:] == first[1:]
        sibling = folder / "pose_guider-1.pth"
        os.utime(sibling, ns=(time.time_ns(), time.time_ns()))  # a part inside the authors' folder changes
        third = prints()
        assert third[1] != second[1] and third[0] == second[0]
        config = root / "imagpose" / "tiny-dinov2" / "config.json"
        os.utime(config, ns=(time.time_ns(), time.time_ns()))
        assert prints()[2] != third[2], "every file of an encoder folder counts"
        missing = loader.fingerprint_inputs("gone.safetensors", "none", "auto", "auto")
        assert missing[0] == "missing" and "gone.safetensors" in missing[1]
    finally:
        pack.unlink(missing_ok=True)

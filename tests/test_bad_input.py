"""Bad input inside an in-process ComfyUI: one boundary names node, input, expected and got for every node; combos
are checked by the pack; sizes are refused before anything is allocated; IMAGPose conditioning on another model says
so. The same classes on a real server: tests/e2e/test_e2e_bad_input.py."""
import inspect

import numpy as np
import pytest
import torch

from harness.pose_fixtures import photo, to_image_tensor
from harness.inprocess import pack_module

UNSAFE = ("weights_only` set to `False`", "weights_only=False", "add_safe_globals", "safe_globals(")
TORCH_ADVICE = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
                "succeed, but it can result in arbitrary code execution. Do it only if you got the file from a trusted "
                "source.\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.")
GIB = 1024**3


def node(nodes, name):
    return nodes.NODE_CLASS_MAPPINGS[name]


def pack_nodes(nodes):
    return {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("IMAGPose")}


def keypoints(canvas=(64, 64), nose=(10.0, 10.0), frames=1):
    body = [nose[0], nose[1], 1.0] + [v for i in range(17) for v in (20.0 + i, 20.0 + 2 * i, 1.0)]
    return [{"people": [{"pose_keypoints_2d": body}], "canvas_width": canvas[0], "canvas_height": canvas[1]}] * frames


@pytest.fixture
def free_memory(monkeypatch):
    """Set what ComfyUI reports free (bytes), for refusals that must not depend on this machine."""
    import comfy.model_management

    def set_free(size):
        monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: size)

    return set_free


@pytest.fixture(scope="module")
def parts(comfy_nodes, tiny_models):
    import comfy.sd
    import comfy.utils

    _, paths = tiny_models
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    model, bundle = node(comfy_nodes, "IMAGPoseModelLoader").execute("tiny-imagpose.safetensors", "none", "auto",
                                                                      "auto").result
    encoder = node(comfy_nodes, "IMAGPoseImageEncoderLoader").execute("tiny-dinov2").result[0]
    positive, negative = node(comfy_nodes, "IMAGPoseFLCEncode").execute(encoder, bundle, vae, torch.rand(1, 64, 64, 3),
                                                                        0, False, 64, 64, "pad").result
    return {"vae": vae, "model": model, "bundle": bundle, "encoder": encoder, "positive": positive,
            "negative": negative}


# -- one boundary, every node -----------------------------------------------------------------------------------------

def test_every_node_checks_its_combos_at_queue_time(comfy_nodes):
    nodes = pack_nodes(comfy_nodes)
    assert len(nodes) >= 8, sorted(nodes)  # every node of the pack, those added later too
    for name, cls in nodes.items():
        schema = cls.define_schema()
        assert inspect.unwrap(cls.execute) is not cls.execute, f"{name}.execute does not pass through the boundary"
        combos = [item.id for item in schema.inputs if getattr(item, "options", None) is not None]
        assert set(combos) <= set(inspect.getfullargspec(cls.validate_inputs).args), name
        for combo in combos:
            message = cls.validate_inputs(**{combo: "no-such-choice"})
            assert isinstance(message, str) and message.startswith(f"{schema.display_name}: input '{combo}': expected"), \
                (name, message)
            assert "'no-such-choice'" in message, message


def test_combos_linked_from_other_nodes_are_checked_when_the_node_runs(comfy_nodes):
    """Values linked from other nodes are unknown at queue time: the boundary checks them at execution."""
    unpack, extract, retarget = (node(comfy_nodes, n) for n in
                                 ("IMAGPoseGridUnpack", "IMAGPosePoseExtract", "IMAGPosePoseRetarget"))
    with pytest.raises(ValueError, match="^IMAGPose Grid Unpack: input 'which': expected one of targets, all; "
                                         "got 'everything'$"):
        grid = pack_module(comfy_nodes, "imagpose.grid")
        unpack.execute([torch.zeros(1, 64, 64, 3)], [grid.SequenceLayout((grid.make_layout(1, 3, 32, 32),), (1,))],
                       ["everything"])
    image = to_image_tensor(photo("astronaut"))
    for person, on_no_person, bad in (("tallest", "error", "person"), ("largest", "skip", "on_no_person")):
        with pytest.raises(ValueError, match=f"^IMAGPose Pose Extract: input '{bad}': expected one of "):
            extract.execute(image, "auto", True, False, person, 0, on_no_person)
    with pytest.raises(ValueError, match="^IMAGPose Pose Extract: input 'person_index': expected a value from 0 to 64"):
        extract.execute(image, "auto", True, False, "by_index", -1, "error")
    with pytest.raises(ValueError, match="^IMAGPose Pose Retarget: input 'anchor': expected one of neck, hips, center, "
                                         "feet; got 'head'$"):
        retarget.execute(keypoints(), keypoints(), "head", True, False)


def test_person_index_beyond_the_people_found_names_person_index(comfy_nodes):
    pytest.importorskip("mediapipe", reason="the MediaPipe pose backend is a test requirement")
    with pytest.raises(ValueError, match="^IMAGPose Pose Extract: input 'person_index': .*out of range: 1 people"):
        node(comfy_nodes, "IMAGPosePoseExtract").execute(to_image_tensor(photo("astronaut")), "mediapipe", False,
                                                         False, "by_index", 3, "error")


def test_boundary_names_the_node_for_unexpected_errors_and_passes_interruption_and_oom(comfy_nodes):
    import comfy.model_management

    errors = pack_module(comfy_nodes, "imagpose.comfyui.errors")
    unpack = node(comfy_nodes, "IMAGPoseGridUnpack")

    def raised(error):
        try:
            with errors.node_boundary(unpack):
                raise error
        except BaseException as out:  # noqa: BLE001 - what the boundary lets out is the point
            return out

    unexpected = raised(RuntimeError(TORCH_ADVICE + " x" * 2000))
    assert str(unexpected).startswith("IMAGPose Grid Unpack: unexpected RuntimeError"), str(unexpected)
    assert "GLOBAL posix.system" in str(unexpected) and len(str(unexpected)) < 1000
    assert not any(u in str(unexpected) for u in UNSAFE) and unexpected.__cause__ is None
    interrupted = comfy.model_management.InterruptProcessingException()
    assert raised(interrupted) is interrupted
    gpu_oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert raised(gpu_oom) is gpu_oom  # ComfyUI frees its models for exactly this type
    cpu_oom = raised(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 30 GB"))
    assert str(cpu_oom).startswith("IMAGPose Grid Unpack: ran out of memory"), str(cpu_oom)


# -- sizes --------------------------------------------------------------------------------------------------------------

def test_pose_render_sizes_are_bounded(comfy_nodes, free_memory):
    render = node(comfy_nodes, "IMAGPosePoseRender")
    assert "input 'width': expected a value from 0 to 8192; got 16384" in render.validate_inputs(width=16384, height=64)
    with pytest.raises(ValueError, match=r"^IMAGPose Pose Render: input 'keypoints': expected a size of at most "
                                         r"8192x8192 px; got 100000x100000 \(the poses' canvas"):
        render.execute(keypoints(canvas=(100000, 100000)), 0, 0, True, False)
    with pytest.raises(ValueError, match="input 'keypoints': expected POSE_KEYPOINT .*whole numbers of pixels"):
        render.execute(keypoints(canvas=(float("inf"), 64)), 0, 0, True, False)
    free_memory(64 * 2**20)
    with pytest.raises(ValueError, match=r"^IMAGPose Pose Render: input 'width/height': expected pose images, within "
                                         r"the memory available now \(0.1 GiB free RAM\); got 20 pose image\(s\) of "
                                         r"1024x1024, which needs about 0.2 GiB"):
        render.execute(keypoints(frames=20), 1024, 1024, True, False)
    assert render.execute(keypoints(frames=2), 256, 256, True, False).result[0].shape == (2, 256, 256, 3)


def test_retarget_and_extract_sizes_are_bounded(comfy_nodes, free_memory):
    retarget, extract = node(comfy_nodes, "IMAGPosePoseRetarget"), node(comfy_nodes, "IMAGPosePoseExtract")
    with pytest.raises(ValueError, match="^IMAGPose Pose Retarget: input 'source_keypoints': expected a size of at most"):
        retarget.execute(keypoints(), keypoints(canvas=(50000, 64)), "neck", True, False)
    free_memory(2**20)
    with pytest.raises(ValueError, match=r"^IMAGPose Pose Extract: input 'images': expected pose images the size of the "
                                         r"photos, within .*got 2 photo\(s\) of 512x512"):
        extract.execute(to_image_tensor(photo("astronaut"), photo("astronaut")), "auto", True, False, "largest", 0,
                        "error")


def test_cells_are_refused_when_their_vae_work_does_not_fit(comfy_nodes, parts, free_memory):
    flc, ilc = node(comfy_nodes, "IMAGPoseFLCEncode"), node(comfy_nodes, "IMAGPoseILCPack")
    free_memory(2 * GIB)
    with pytest.raises(ValueError, match=r"^IMAGPose FLC Encode: input 'width/height': expected cells the VAE can "
                                         r"encode, within the memory available now \(2.0 GiB free RAM\); got "
                                         r"512x512 cells .*which needs about 3.2 GiB"):
        flc.execute(parts["encoder"], parts["bundle"], parts["vae"], torch.rand(1, 64, 64, 3), 0, False, 512, 512, "pad")
    made_for_256 = [[c[0], {**c[1], "imagpose_cell": (256, 256, "pad")}] for c in parts["positive"]]
    with pytest.raises(ValueError, match=r"^IMAGPose ILC Pack: input 'width/height': expected a cell whose 2x2 grid the "
                                         r"VAE can encode, within .*got 256x256 cells \(0.3 megapixels to VAE-encode on cpu\), "
                                         r"which needs about 3.2 GiB"):
        ilc.execute(made_for_256, made_for_256, parts["vae"], torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3), 256,
                    256, "pad", "auto", source_poses=torch.rand(1, 64, 64, 3))


def test_an_extreme_aspect_ratio_cropped_into_a_cell_is_refused(comfy_nodes, parts, free_memory):
    """crop scales a 65536x1 strip by 64 before cutting the cell out: 6 GiB for a 64x64 cell."""
    free_memory(GIB)
    for_crop = [[c[0], {**c[1], "imagpose_cell": (64, 64, "crop")}] for c in parts["positive"]]
    with pytest.raises(ValueError, match=r"^IMAGPose ILC Pack: input 'target_poses': expected images that can be fitted "
                                         r"\(crop\) into 64x64 cells, within .*got 1 image\(s\) of 65536x1, resized to "
                                         r"4194304x64 first"):
        node(comfy_nodes, "IMAGPoseILCPack").execute(for_crop, for_crop, parts["vae"], torch.rand(1, 64, 64, 3),
                                                     torch.rand(1, 1, 65536, 3), 64, 64, "crop", "auto",
                                                     source_poses=torch.rand(1, 64, 64, 3))


def test_source_poses_extracted_by_ilc_pack_are_bounded(comfy_nodes, parts, free_memory):
    free_memory(2**20)
    with pytest.raises(ValueError, match=r"^IMAGPose ILC Pack: input 'source_images': expected pose images the size of "
                                         r"the photos, within .*got 1 photo\(s\) of 512x512"):
        node(comfy_nodes, "IMAGPoseILCPack").execute(parts["positive"], parts["negative"], parts["vae"],
                                                     torch.rand(1, 512, 512, 3), torch.rand(1, 64, 64, 3), 64, 64,
                                                     "pad", "auto", source_poses=None)


def test_unpack_output_is_bounded(comfy_nodes, free_memory):
    free_memory(1024)
    with pytest.raises(ValueError, match="^IMAGPose Grid Unpack: input 'images': expected cells to cut out, within"):
        grid = pack_module(comfy_nodes, "imagpose.grid")
        layout = grid.SequenceLayout((grid.make_layout(1, 3, 32, 32),), (1,))
        node(comfy_nodes, "IMAGPoseGridUnpack").execute([torch.zeros(1, 64, 64, 3)], [layout], ["all"])


# -- raw errors of libraries --------------------------------------------------------------------------------------------

def test_keypoints_too_far_out_to_draw_are_named(comfy_nodes):
    far = keypoints(nose=(1e30, 1e30))
    with pytest.raises(ValueError, match=r"^IMAGPose Pose Render: input 'keypoints': expected keypoints inside or near "
                                         r"their canvas; got a keypoint at \(1e\+30, 1e\+30\)"):
        node(comfy_nodes, "IMAGPosePoseRender").execute(far, 0, 0, True, False)
    with pytest.raises(ValueError, match="^IMAGPose Pose Retarget: input 'target_keypoints': expected keypoints inside"):
        node(comfy_nodes, "IMAGPosePoseRetarget").execute(far, far, "neck", True, False)
    near = keypoints(nose=(-5000.0, 30.0))  # off the canvas but drawable: no error, the limb leaves the image
    assert node(comfy_nodes, "IMAGPosePoseRender").execute(near, 0, 0, True, False).result[0].shape == (1, 64, 64, 3)


def test_long_names_and_pickled_encoders_are_named_without_unsafe_advice(comfy_nodes, tiny_models):
    import shutil

    root, paths = tiny_models
    loader = node(comfy_nodes, "IMAGPoseImageEncoderLoader")
    message = loader.validate_inputs(image_encoder="x" * 5000)
    assert "input 'image_encoder'" in message and "a name of 5000 characters" in message, message
    assert str(root) not in message and len(message) < 1000
    evil = root / "imagpose" / "evil-dinov2"
    evil.mkdir()
    try:
        shutil.copy(paths["dinov2"] / "config.json", evil / "config.json")
        torch.save({"embeddings.cls_token": RunsCode(root / "pwned")}, evil / "pytorch_model.bin")
        with pytest.raises(ValueError, match="^IMAGPose Image Encoder Loader: input 'image_encoder': .*'evil-dinov2'") \
                as error:
            loader.execute("evil-dinov2")
        assert "could run code" in str(error.value) and not any(u in str(error.value) for u in UNSAFE), str(error.value)
        assert error.value.__cause__ is None  # ComfyUI logs the chain: torch's advice is in its message
        assert not (root / "pwned").exists()
    finally:
        shutil.rmtree(evil)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# -- IMAGPose conditioning on another model -----------------------------------------------------------------------------

def test_imagpose_conditioning_on_a_plain_model_says_so(comfy_nodes, parts):
    """ComfyUI's own SD1.5 model at the test size takes 64-wide contexts like the tiny DINOv2: without the check it
    would sample without complaint and ignore the poses."""
    import comfy.sample

    from harness.plain_model import plain_model_patcher

    (positive,), (negative,), (latent,), *_ = node(comfy_nodes, "IMAGPoseILCPack").execute(
        parts["positive"], parts["negative"], parts["vae"], torch.rand(1, 64, 64, 3), torch.rand(2, 64, 64, 3), 64, 64,
        "pad", "auto", source_poses=torch.rand(1, 64, 64, 3)).result
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^IMAGPose conditioning \\(from IMAGPose ILC Pack\\) reached a model that is "
                                         "not an IMAGPose model"):
        comfy.sample.sample(plain_model_patcher(), noise, 2, 2.0, "euler", "simple", positive, negative,
                            latent["samples"], seed=1)
    out = comfy.sample.sample(parts["model"], noise, 2, 2.0, "euler", "simple", positive, negative, latent["samples"],
                              seed=1)
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()


def test_pose_images_keep_their_values_after_the_rewrite(comfy_nodes):
    """Drawn into one float tensor a frame at a time: the same values as stacking uint8 frames and dividing by 255."""
    from imagpose import pose as P

    frames = P.openpose_to_frames(keypoints(frames=3))
    drawn = P.render_pose_images(frames, 96, 80)
    reference = np.stack([P.render_frame(f, 96, 80) for f in frames]).astype(np.float32) / 255.0
    assert np.array_equal(drawn.numpy(), reference)

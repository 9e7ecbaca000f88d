"""Checkpoint formats: authors' .pth files and the pack's .safetensors give the same model; bad files are refused."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from imagpose import checkpoints
from imagpose.checkpoints import CheckpointError, build_model, has_unsafe_advice, load_weights, without_unsafe_advice
from imagpose.testing import TINY_UNET, make_tiny_model
from imagpose.unet import IMAGPoseUNet

REPO = Path(__file__).resolve().parents[1]


def outputs(model):
    torch.manual_seed(0)
    sample, context, pose = torch.randn(1, 9, 16, 16), torch.randn(1, 261, 64), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        return model(sample, torch.tensor([321.0]), context, pose)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_model(seed=5)
    checkpoints.save_authors_format(model, root / "authors", step=7)
    return root, model


def test_authors_files_and_converted_pack_give_identical_outputs(written):
    root, model = written
    out = root / "converted.safetensors"
    result = subprocess.run([sys.executable, "-m", "imagpose.convert", str(root / "authors"), str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from_authors = build_model(load_weights(root / "authors"))
    from_unet_file = build_model(load_weights(root / "authors" / "denoising_unet-7.pth"))
    from_pack = build_model(load_weights(out))
    reference = outputs(model)
    for loaded in (from_authors, from_unet_file, from_pack):
        assert torch.equal(outputs(loaded), reference)


def test_converter_round_trip_is_lossless(written):
    root, model = written
    out = root / "round.safetensors"
    from imagpose.convert import convert

    convert(root / "authors", out)
    packed = load_file(str(out))
    original = {f"{part}.{k}": v for part in checkpoints.PARTS for k, v in getattr(model, part).state_dict().items()}
    assert packed.keys() == original.keys()
    assert all(torch.equal(packed[k], original[k]) for k in original)
    # back again: pack -> authors' layout -> pack, bit for bit
    again = build_model(load_weights(out))
    checkpoints.save_authors_format(again, root / "again", step=1)
    for part, name in (("unet", "denoising_unet"), ("pose_guider", "pose_guider"), ("patch_embed", "patch")):
        saved = torch.load(root / "again" / f"{name}-1.pth", weights_only=True)
        assert all(torch.equal(saved[k], v) for k, v in getattr(model, part).state_dict().items())


def test_motion_module_file_overrides_only_cva_weights(written, tmp_path):
    root, model = written
    other = make_tiny_model(seed=9)
    torch.save(other.unet.state_dict(), tmp_path / "motion_module-3.pth")  # authors save the whole UNet
    weights = load_weights(root / "authors", motion_module=tmp_path / "motion_module-3.pth")
    merged = build_model(weights)
    for (name, p_merged), p_base, p_other in zip(merged.unet.named_parameters(), model.unet.parameters(),
                                                 other.unet.parameters()):
        assert torch.equal(p_merged, p_other if ".motion_modules." in name else p_base), name


def test_sd15_size_has_21_cva_modules_at_the_right_widths():
    config = {**TINY_UNET, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
              "cross_attention_dim": 768, "sample_size": 64}
    with torch.device("meta"):
        unet = IMAGPoseUNet(**config)
    assert len(unet.cva_modules()) == 21
    assert [m.config["channels"] for m in unet.cva_modules()[:8]] == [320, 320, 640, 640, 1280, 1280, 1280, 1280]


def tiny_diffusers_unet(in_channels, **extra):
    config = {**TINY_UNET, "in_channels": in_channels, **extra}
    return UNet2DConditionModel(**config).state_dict()


@pytest.mark.parametrize("case,expected", [
    ("plain_sd15", "4 input channels"),
    ("sdxl", "SDXL"),
    ("random", "match no known layout"),
    ("ldm", "original-format"),
])
def test_non_imagpose_checkpoints_are_named(tmp_path, case, expected):
    if case == "plain_sd15":
        state_dict = tiny_diffusers_unet(4)
    elif case == "sdxl":
        state_dict = {**tiny_diffusers_unet(4), "add_embedding.linear_1.weight": torch.zeros(8, 8)}
    elif case == "random":
        state_dict = {"foo.weight": torch.randn(3, 3), "bar": torch.randn(2)}
    else:
        state_dict = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4)}
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))
    with pytest.raises(CheckpointError, match=expected):
        load_weights(path)


def test_stage1_unet_without_cva_is_explained(tmp_path):
    model = make_tiny_model()
    folder = tmp_path / "stage1"
    checkpoints.save_authors_format(model, folder)
    unet = torch.load(folder / "denoising_unet-1.pth", weights_only=True)
    torch.save({k: v for k, v in unet.items() if ".motion_modules." not in k}, folder / "denoising_unet-1.pth")
    with pytest.raises(CheckpointError, match="stage-1"):
        build_model(load_weights(folder))


def test_truncated_files_are_refused(written, tmp_path):
    root, _ = written
    for source in (root / "authors" / "denoising_unet-7.pth", root / "converted.safetensors"):
        data = source.read_bytes()
        broken = tmp_path / f"broken{source.suffix}"
        broken.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated"):
            load_weights(broken)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/imagpose-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv_in.weight": RunsCode()}, handle)
    torch.save({"conv_in.weight": RunsCode()}, tmp_path / "evil2.pth")
    for candidate in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="refused: it is a pickle holding more than tensors") as error:
            load_weights(candidate)
        # torch's own message advises loading the file unsafely: that advice must not reach the user, nor the log
        assert not has_unsafe_advice(str(error.value)) and error.value.__cause__ is None, str(error.value)
    assert not Path("/tmp/imagpose-pwned").exists()


def test_unsafe_advice_is_removed_from_torchs_message():
    message = ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
               "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
               "likely succeed, but it can result in arbitrary code execution. Do it only if you got the file from a "
               "trusted source.\nPlease use `torch.serialization.add_safe_globals([Evil])` or the "
               "`torch.serialization.safe_globals([Evil])` context manager to allowlist this global if you trust this "
               "class/function.\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.")
    shown = without_unsafe_advice(message)
    assert not has_unsafe_advice(shown), shown
    assert "GLOBAL posix.system" in shown and "could run code" in shown
    assert without_unsafe_advice("a plain message.") == "a plain message."


def test_corrupt_pack_metadata_is_named(written, tmp_path):
    root, model = written
    pack = checkpoints.save_pack(model, root / "for-corruption.safetensors")
    for config in ("{not json", '{"heads": "many"}', '["a list"]', '{"heads": 0}'):
        broken = tmp_path / "corrupt.safetensors"
        save_file(load_file(str(pack)), str(broken), metadata={"format": "imagpose-pack", "config": config})
        with pytest.raises(CheckpointError, match="corrupt.safetensors: its metadata 'config'"):
            load_weights(broken)


def test_missing_parts_name_the_expected_files(written, tmp_path):
    root, _ = written
    folder = tmp_path / "only_unet"
    folder.mkdir()
    (folder / "denoising_unet-7.pth").write_bytes((root / "authors" / "denoising_unet-7.pth").read_bytes())
    with pytest.raises(CheckpointError, match="pose_guider-N.pth"):
        load_weights(folder)


def test_pack_is_written_atomically(tmp_path, monkeypatch):
    model = make_tiny_model()
    target = tmp_path / "out.safetensors"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", fail)
    with pytest.raises(OSError):
        checkpoints.save_pack(model, target)
    assert list(tmp_path.iterdir()) == []


def test_several_steps_in_one_folder_pick_the_matching_step(tmp_path):
    first, second = make_tiny_model(seed=1), make_tiny_model(seed=2)
    checkpoints.save_authors_format(first, tmp_path, step=1000)
    checkpoints.save_authors_format(second, tmp_path, step=2000)
    loaded = build_model(load_weights(tmp_path / "denoising_unet-2000.pth"))
    assert torch.equal(outputs(loaded), outputs(second))
    with pytest.raises(CheckpointError, match="several UNets"):
        load_weights(tmp_path)
    (tmp_path / "pose_guider-2000.pth").rename(tmp_path / "pose_guider-best.pth")
    with pytest.raises(CheckpointError, match="several pose guider files fit"):
        load_weights(tmp_path / "denoising_unet-2000.pth")


def test_folder_with_stage2_unet_named_motion_module_loads(tmp_path):
    """The authors' stage 2 saves the whole UNet as motion_module-N.pth: keys, not names, decide."""
    model = make_tiny_model(seed=4)
    checkpoints.save_authors_format(model, tmp_path, step=5)
    (tmp_path / "denoising_unet-5.pth").rename(tmp_path / "motion_module-5.pth")
    assert torch.equal(outputs(build_model(load_weights(tmp_path))), outputs(model))

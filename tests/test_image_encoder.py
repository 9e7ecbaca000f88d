"""DINOv2: the position table resampled once by a named method (so transformers' version does not matter), strict
loading that refuses anything that is not a DINOv2, and the one preprocessing function of trainer and nodes."""
import os
import tempfile
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from harness.encoders import write_wrong_encoders
from imagpose import image_encoder
from imagpose.image_encoder import (AUTHORS_POSITIONS, ENCODER_SIZE, ImageEncoderError, encode, load_dinov2,
                                    preprocess, resample_positions)
from imagpose.testing import TINY_DINOV2, write_tiny_dinov2
from trainer.models import SetupError, load_image_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

GRID = ENCODER_SIZE // TINY_DINOV2["patch_size"]  # 16
SIDE = TINY_DINOV2["image_size"] // TINY_DINOV2["patch_size"]  # 37, as DINOv2-base


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A DINOv2 folder with the real 37x37 table (518 px config), random weights, a smooth position table."""
    from transformers import Dinov2Model

    folder = write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2")
    model = Dinov2Model.from_pretrained(str(folder))
    coarse = torch.randn(1, TINY_DINOV2["hidden_size"], 5, 5, generator=torch.Generator().manual_seed(0))
    smooth = F.interpolate(coarse, size=(SIDE, SIDE), mode="bicubic", align_corners=True)
    with torch.no_grad():
        model.embeddings.position_embeddings[0, 1:] = smooth.permute(0, 2, 3, 1).reshape(SIDE * SIDE, -1)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def photo(height=96, width=80):
    from skimage import data

    image = torch.from_numpy(np.ascontiguousarray(data.astronaut())).float().div(255).movedim(-1, 0)[None]
    return F.interpolate(image, size=(height, width), mode="bilinear", antialias=True).clamp(0, 1)


def transformers_resampling(table: torch.Tensor):
    """The installed transformers' own resampling of `table` to the 224 px grid."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**{**TINY_DINOV2, "num_hidden_layers": 1}))
    model.embeddings.position_embeddings.data = table.clone()
    with torch.no_grad():
        embeddings = torch.zeros(1, 1 + GRID * GRID, table.shape[-1])
        return model.embeddings.interpolate_pos_encoding(embeddings, ENCODER_SIZE, ENCODER_SIZE)


def test_position_methods_are_the_two_transformers_resamplings():
    import transformers
    from packaging.version import Version

    width = TINY_DINOV2["hidden_size"]
    table = torch.randn(1, 1 + SIDE * SIDE, width, generator=torch.Generator().manual_seed(1))
    by_size, by_factor = (resample_positions(table, GRID, m) for m in ("bicubic-size", "bicubic-scale-factor"))
    assert by_size.shape == by_factor.shape == (1, 1 + GRID * GRID, width)
    assert torch.equal(by_size[:, 0], table[:, 0]) and torch.equal(by_factor[:, 0], table[:, 0])  # class token kept
    installed = transformers_resampling(table)
    own = by_size if Version(transformers.__version__) >= Version("4.45") else by_factor
    assert torch.equal(own, installed), f"transformers {transformers.__version__} resamples differently"
    # transformers <= 4.44 (the authors' 4.40): bicubic by a scale factor of (16 + 0.1) / 37, not to size 16
    patches = table[:, 1:].reshape(1, SIDE, SIDE, width).permute(0, 3, 1, 2)
    by_hand = F.interpolate(patches, scale_factor=((GRID + 0.1) / SIDE,) * 2, mode="bicubic", align_corners=False)
    assert torch.equal(by_factor[:, 1:], by_hand.permute(0, 2, 3, 1).reshape(1, GRID * GRID, width))
    assert (by_size - by_factor).abs().max() > 0.05, "the two methods must differ (that is the version dependence)"
    assert torch.equal(resample_positions(by_size, GRID, "bicubic-scale-factor"), by_size)  # the grid's own size


def test_table_is_resampled_once_and_transformers_never_resamples(dinov2):
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    encoder = load_dinov2(dinov2)
    table = encoder.model.embeddings.position_embeddings
    assert table.shape == (1, 1 + GRID * GRID, TINY_DINOV2["hidden_size"]) and encoder.positions == AUTHORS_POSITIONS
    source = load_file(str(dinov2 / "model.safetensors"))["embeddings.position_embeddings"]
    assert torch.equal(table, resample_positions(source, GRID, AUTHORS_POSITIONS))
    original = Dinov2Embeddings.interpolate_pos_encoding

    def must_not_resample(self, embeddings, height, width):
        assert embeddings.shape[1] == self.position_embeddings.shape[1] and height == width == ENCODER_SIZE
        return original(self, embeddings, height, width)

    image = photo()
    with mock.patch.object(Dinov2Embeddings, "interpolate_pos_encoding", must_not_resample):
        tokens = encode(encoder, image)
    assert tokens.shape == (1, 1 + GRID * GRID, TINY_DINOV2["hidden_size"]) and torch.isfinite(tokens).all()
    # the other method is another table and other features; switching is exact both ways
    encoder.use_positions("bicubic-size")
    other = encode(encoder, image)
    assert (other - tokens).abs().max() > 1e-3
    encoder.use_positions(AUTHORS_POSITIONS)
    assert torch.equal(encode(encoder, image), tokens)


def test_single_file_in_any_key_layout_loads_without_links_or_temporary_folders(dinov2, tmp_path):
    folder = load_dinov2(dinov2)
    state = load_file(str(dinov2 / "model.safetensors"))
    save_file(state, str(tmp_path / "as_saved.safetensors"))
    # a state_dict() of transformers >= 5 in memory, under a task model's prefix
    renamed = {}
    for key, tensor in state.items():
        for saved, in_memory in image_encoder.IN_MEMORY_NAMES:
            key = key.replace(saved, in_memory)
        renamed["dinov2." + key] = tensor
    save_file(renamed, str(tmp_path / "in_memory_names.safetensors"))
    torch.save(state, tmp_path / "pickled.bin")
    image = photo()
    expected = encode(folder, image)
    with mock.patch.object(os, "symlink", side_effect=AssertionError("no symlinks")), \
            mock.patch.object(tempfile, "TemporaryDirectory", side_effect=AssertionError("no temporary folders")):
        for name in ("as_saved.safetensors", "in_memory_names.safetensors", "pickled.bin"):
            assert torch.equal(encode(load_dinov2(tmp_path / name), image), expected), name


@pytest.fixture(scope="module")
def wrong_encoders(tmp_path_factory, dinov2):
    return write_wrong_encoders(tmp_path_factory.mktemp("wrong"), dinov2)


@pytest.mark.parametrize("case", ["clip_folder", "clip_file", "config_only", "clip_weights", "truncated", "missing",
                                  "unexpected"])
def test_wrong_encoders_are_refused_naming_the_file_and_what_it_is(wrong_encoders, case):
    path, message = wrong_encoders[case]
    with pytest.raises(ImageEncoderError) as error:
        load_dinov2(path)
    assert message in str(error.value)
    if case == "clip_weights":
        assert "the weights are a CLIP/SigLIP-style vision model" in str(error.value)
    with pytest.raises(SetupError) as error:  # the trainer says the same, with its config key
        load_image_encoder(path)
    assert str(error.value).startswith(f"model.image_encoder: {path}: ") and message in str(error.value)


def test_preprocessing_rounds_to_8_bit_like_the_authors_pil_path():
    """At the training cell size (512 x 768), against the authors' CLIPImageProcessor on the 8-bit photo."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    worst = 0.0
    for image in (photo(768, 512), photo(768, 512).flip(-1).roll(100, dims=-2)):
        pil = Image.fromarray((image[0].movedim(0, -1) * 255).round().byte().numpy())
        authors = CLIPImageProcessor()(images=pil, return_tensors="pt").pixel_values
        eight_bit = torch.from_numpy(np.asarray(pil)).float().div(255).movedim(-1, 0)[None]
        ours = preprocess(eight_bit)
        levels = (ours * torch.tensor(image_encoder.CLIP_STD).view(1, 3, 1, 1)
                  + torch.tensor(image_encoder.CLIP_MEAN).view(1, 3, 1, 1)) * 255
        assert torch.allclose(levels, levels.round(), atol=1e-3), "the input must be on the 8-bit grid"
        worst = max(worst, (ours - authors).abs().max().item())
    # PIL's bicubic kernel (a = -0.5) vs torch's (-0.75): at most two 8-bit steps (0.0146 each in CLIP units)
    assert worst <= 2.01 / 255 / min(image_encoder.CLIP_STD), worst


def test_preprocessing_equals_comfyui_clip_preprocess(comfy_nodes):
    import comfy.clip_vision

    step = 1 / 255 / min(image_encoder.CLIP_STD)  # one 8-bit step in CLIP units
    for image in (photo(768, 512), photo(96, 80), photo(300, 1000), torch.rand(2, 3, ENCODER_SIZE, ENCODER_SIZE)):
        ours, theirs = preprocess(image), comfy.clip_vision.clip_preprocess(image.movedim(1, -1))
        assert ours.shape == theirs.shape == (image.shape[0], 3, ENCODER_SIZE, ENCODER_SIZE)
        assert (ours - theirs).abs().max() <= step + 1e-5 and (ours == theirs).float().mean() > 0.999

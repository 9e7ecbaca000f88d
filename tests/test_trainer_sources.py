"""Starting from the files people have: SD1.5 single files and AnimateDiff motion modules in their real formats.

Tiny random-weight files are written with the real key names and containers (ldm-keyed safetensors with the VAE
inside, a standalone ldm VAE, diffusers-format VAE weights, `torch.save` .ckpt motion modules in zip and legacy
form, .safetensors) and must load to exactly the weights they were made from; files of other families are refused
with a message naming the file.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from imagpose.testing import TINY_UNET, make_tiny_model
from imagpose.unet import MOTION_KEY
from trainer import sources
from trainer.models import SetupError, load_motion_module, load_vae, stage1_model
from trainer.testing import TINY_VAE
from trainer.testing_files import write_motion_module_ckpt, write_sd15_single_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-channel SD1.5-layout UNet and a VAE (diffusers), their diffusers folder, and one ldm single file of both."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**{**TINY_UNET, "in_channels": 4})
    vae = AutoencoderKL(**TINY_VAE)
    unet.save_pretrained(root / "sd15" / "unet")
    vae.save_pretrained(root / "sd15" / "vae")
    single = write_sd15_single_file(root / "v1-5-pruned-emaonly.safetensors", unet, vae, dtype=torch.float32)
    return root, unet, vae, single


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_single_file_has_the_real_layout(tiny):
    _, unet, vae, single = tiny
    keys = load_file(str(single)).keys()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsampler after a block without attention
                "model.diffusion_model.output_blocks.3.2.conv.weight",  # and after one with attention
                "model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "first_stage_model.encoder.down.0.block.0.norm1.weight", "first_stage_model.decoder.up.3.block.1.conv1.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.quant_conv.weight"):
        assert key in keys, key
    assert not any("down_blocks" in k or "resnets" in k for k in keys), "diffusers names must not leak into an ldm file"


def test_single_file_unet_and_vae_are_the_weights_they_were_made_from(tiny):
    _, unet, vae, single = tiny
    loaded = sources.load_base_unet(single)
    assert same_weights(loaded, unet)
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim",
                "attention_head_dim", "in_channels", "out_channels"):
        assert list(loaded.config[key]) == list(unet.config[key]) if isinstance(unet.config[key], (list, tuple)) \
            else loaded.config[key] == unet.config[key], key
    assert same_weights(load_vae(single), vae)


def test_stage1_from_single_file_equals_stage1_from_the_diffusers_folder(tiny):
    root, _, _, single = tiny
    torch.manual_seed(0)
    from_file = stage1_model(single, (16, 16, 32, 32), 4)
    torch.manual_seed(0)
    from_folder = stage1_model(root / "sd15", (16, 16, 32, 32), 4)
    assert same_weights(from_file, from_folder)
    assert from_file.unet.conv_in.weight.shape[1] == 9


def test_every_vae_file_form_loads_the_same_weights(tiny, tmp_path):
    root, _, vae, single = tiny
    bare_ldm = {k.removeprefix("first_stage_model."): v for k, v in load_file(str(single)).items()
                if k.startswith("first_stage_model.")}
    save_file(bare_ldm, str(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"))
    save_file(vae.state_dict(), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    torch.save(load_file(str(single)), tmp_path / "v1-5-pruned-emaonly.ckpt")  # the .ckpt form of the single file
    for path in (root / "sd15" / "vae", root / "sd15", tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors",
                 tmp_path / "diffusion_pytorch_model.safetensors", tmp_path / "v1-5-pruned-emaonly.ckpt"):
        assert same_weights(load_vae(path), vae), path


def ldm_unet(single: Path) -> dict:
    return {k: v for k, v in load_file(str(single)).items() if k.startswith("model.diffusion_model.")}


def write(path: Path, state: dict) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_other_families_are_refused_by_name(tiny, tmp_path):
    _, _, _, single = tiny
    unet = ldm_unet(single)
    sdxl = write(tmp_path / "sd_xl_base_1.0.safetensors",
                 {**unet, "conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8),
                  "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 8)})
    to_k = next(k for k in unet if k.endswith("attn2.to_k.weight"))
    sd2 = write(tmp_path / "v2-1_768-ema-pruned.safetensors",
                {**unet, to_k: torch.zeros(unet[to_k].shape[0], 1024), "cond_stage_model.model.ln_final.weight": torch.zeros(4)})
    inpainting = write(tmp_path / "sd-v1-5-inpainting.safetensors",
                       {**unet, "model.diffusion_model.input_blocks.0.0.weight":
                        torch.zeros(unet["model.diffusion_model.input_blocks.0.0.weight"].shape[0], 9, 3, 3)})
    foreign = write(tmp_path / "random.safetensors", {"weight": torch.zeros(3), "bias": torch.zeros(3)})
    motion = write(tmp_path / "mm_sd_v15_v2.safetensors",
                   {k: v for k, v in make_tiny_model(0).unet.state_dict().items() if MOTION_KEY in k})
    expected = {sdxl: "SDXL", sd2: "SD2", inpainting: "9-channel", foreign: "not a Stable Diffusion checkpoint",
                motion: "motion module"}
    for path, words in expected.items():
        with pytest.raises(SetupError) as error:
            stage1_model(path)
        assert str(path) in str(error.value) and words in str(error.value), str(error.value)


def test_broken_and_unsafe_files_are_refused_by_name(tiny, tmp_path):
    _, _, _, single = tiny
    truncated = tmp_path / "v1-5-pruned-emaonly.safetensors"
    truncated.write_bytes(single.read_bytes()[: 4096])
    with pytest.raises(SetupError, match="v1-5-pruned-emaonly.safetensors"):
        stage1_model(truncated)
    unsafe = tmp_path / "v1-5-pruned.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "hook": print}, unsafe)  # unpickling would need code
    with pytest.raises(SetupError, match="v1-5-pruned.ckpt was refused"):
        stage1_model(unsafe)
    with pytest.raises(SetupError, match="not found.*unet/config.json"):
        stage1_model(tmp_path / "missing")
    with pytest.raises(SetupError, match="holds no VAE"):
        load_vae(write(tmp_path / "unet-only.safetensors", ldm_unet(single)))


@pytest.fixture(scope="module")
def motion():
    """The CVA weights of a tiny IMAGPose UNet with random values: what the files below hold."""
    return {k: v for k, v in make_tiny_model(seed=3).unet.state_dict().items() if MOTION_KEY in k}


def cva_of(unet) -> dict:
    return {k: v for k, v in unet.state_dict().items() if MOTION_KEY in k}


def test_motion_module_in_every_published_form_initialises_cva(motion, tmp_path):
    state = {**make_tiny_model(seed=3).unet.state_dict()}
    legacy = tmp_path / "mm_sd_v15_v2_legacy.ckpt"
    torch.save(motion, legacy, _use_new_zipfile_serialization=False)
    nested = tmp_path / "motion_module_nested.ckpt"
    torch.save({"state_dict": motion}, nested)
    forms = [write_motion_module_ckpt(tmp_path / "mm_sd_v15_v2.ckpt", state), legacy, nested,
             write(tmp_path / "mm_sd_v15_v2.safetensors", motion)]
    for path in forms:
        unet = make_tiny_model(seed=0).unet
        assert load_motion_module(unet, path) == len(motion), path
        loaded = cva_of(unet)
        assert all(torch.equal(loaded[k], v) for k, v in motion.items()), path


def test_motion_modules_of_other_families_are_refused_by_name(motion, tmp_path):
    wider = {k: torch.zeros(*(2 * s for s in v.shape)) for k, v in motion.items()}  # an SDXL-width module
    sdxl = write(tmp_path / "mm_sdxl_v10_beta.safetensors", wider)
    with pytest.raises(SetupError, match="mm_sdxl_v10_beta.safetensors does not fit"):
        load_motion_module(make_tiny_model(seed=0).unet, sdxl)
    other = tmp_path / "not_a_motion_module.ckpt"
    torch.save({"conv.weight": torch.zeros(2)}, other)
    with pytest.raises(SetupError, match="not_a_motion_module.ckpt holds no"):
        load_motion_module(make_tiny_model(seed=0).unet, other)
    unsafe = tmp_path / "mm_unsafe.ckpt"
    torch.save({"down_blocks.0.motion_modules.0.x": print}, unsafe)
    with pytest.raises(SetupError, match="mm_unsafe.ckpt was refused"):
        load_motion_module(make_tiny_model(seed=0).unet, unsafe)

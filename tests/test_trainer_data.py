"""Trainer data and loss pieces: cell roles, shared augmentation, pose rule errors, group building, min-SNR, configs."""
import json
from pathlib import Path

import pytest
import torch

from imagpose.grid import CELLS
from imagpose.training import condition_dropout, layout_from_roles, min_snr_weights, random_cell_roles, widen_conv_in
from trainer import data as data_lib
from trainer.config import ConfigError, load_config, resolve_batch
from trainer.data import DataError, GroupDataset, PoseRule, SampleAugmentation, augment_pair, pick_images
from trainer.loss import grid_inputs, make_noise_scheduler
from trainer.testing import (POSE_TEMPLATE, mirrored_cells, photos, write_dataset,
                             write_ramp_group)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainer" / "configs"


@pytest.fixture(scope="module")
def dataset_json(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def test_random_roles_have_a_source_and_a_target_and_cover_all_mixes():
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(600):
        roles = random_cell_roles(generator)
        assert len(roles) == CELLS and any(roles) and not all(roles)
        seen.add(roles)
    assert len(seen) == 2**CELLS - 2  # all 14 mixes of >= 1 source and >= 1 target


def test_layout_from_roles_flags_and_targets():
    layout = layout_from_roles((True, False, False, True), 64, 64)
    assert layout.flags == (1, 0, 0, 1)
    assert layout.target_cells == (1, 2)
    assert layout.cell_sources == (0, None, None, 3)
    for bad in ((True,) * 4, (False,) * 4, (True, False)):
        with pytest.raises(ValueError):
            layout_from_roles(bad, 64, 64)


def test_dataset_samples_roles_reference_and_shapes(dataset_json):
    dataset = GroupDataset(data_lib.load_groups(dataset_json), 64, 64, PoseRule(template=POSE_TEMPLATE))
    assert len(dataset) == 2
    for seed in range(20):
        sample = dataset.sample(seed % 2, torch.Generator().manual_seed(seed))
        roles = sample["roles"]
        assert roles.dtype == torch.bool and roles.any() and not roles.all()
        assert roles[sample["reference"]], "the FLC reference must be a source cell"
        assert sample["images"].shape == sample["poses"].shape == (4, 3, 64, 64)
        assert 0.0 <= float(sample["images"].min()) and float(sample["images"].max()) <= 1.0


def test_pick_images_distinct_as_far_as_the_group_allows():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        assert sorted(set(pick_images(2, generator))) == [0, 1]
        assert sorted(set(pick_images(3, generator))) == [0, 1, 2]
        picked = pick_images(9, generator)
        assert len(picked) == 4 and len(set(picked)) == 4


def test_augmentation_moves_image_and_pose_identically():
    image = torch.from_numpy(photos()["coffee"]).permute(2, 0, 1).float() / 255  # 400 x 600, not square
    outputs = set()
    for seed in range(12):
        augmentation = SampleAugmentation.draw(torch.Generator().manual_seed(seed))
        out_image, out_pose = augment_pair(image, image.clone(), 64, 64, augmentation)
        assert out_image.shape == (3, 64, 64)
        assert torch.equal(out_image, out_pose)
        outputs.add(out_image.sum().item())
        # a different pose picture gets the same geometry: the inverse image stays the inverse
        inv_image, inv_pose = augment_pair(image, 1 - image, 64, 64, augmentation)
        assert torch.allclose(inv_pose, 1 - inv_image, atol=1e-5)
    assert len(outputs) > 3, "crops/flips must vary between draws"
    kept, _ = augment_pair(image, image, 64, 64, SampleAugmentation(0.3, 0.7, flip=False))
    flipped, _ = augment_pair(image, image, 64, 64, SampleAugmentation(0.3, 0.7, flip=True))
    assert torch.equal(flipped, kept.flip(-1)) and not torch.equal(flipped, kept)
    # the crop position is a fraction of the free room: the far end stays inside the image
    last, _ = augment_pair(image, image, 64, 64, SampleAugmentation(0.999, 0.999, flip=False))
    resized = torch.nn.functional.interpolate(image[None], size=(64, 96), mode="bilinear", antialias=True,
                                              align_corners=False).clamp(0, 1)[0]
    assert torch.equal(last, resized[:, :, -64:])


def test_no_sample_mixes_mirrored_and_unmirrored_cells(tmp_path):
    """The authors draw one crop and one flip per sample; 200 samples of photos of different sizes, each
    cell's orientation read from its pixels (a left-to-right ramp), images and poses alike."""
    group = write_ramp_group(tmp_path)
    dataset = GroupDataset([group], 64, 64, PoseRule(template=POSE_TEMPLATE))
    orientations = []
    for seed in range(200):
        sample = dataset.sample(0, torch.Generator().manual_seed(seed))
        images, poses = mirrored_cells(sample["images"]), mirrored_cells(sample["poses"])
        assert images == poses, f"sample {seed}: a pose flipped differently from its photo"
        assert len(set(images)) == 1, f"sample {seed} mixes mirrored and unmirrored cells: {images}"
        orientations.append(images[0])
    assert 60 < sum(orientations) < 140, f"{sum(orientations)} of 200 samples mirrored (flip_prob 0.5)"


def test_missing_pose_is_a_clear_error(dataset_json, tmp_path):
    groups = data_lib.load_groups(dataset_json)
    rule = PoseRule(template=str(tmp_path / "nowhere" / "{stem}.png"))
    expected = tmp_path / "nowhere" / f"{groups[0][0].stem}.png"
    with pytest.raises(DataError, match="pose") as error:
        GroupDataset(groups, 64, 64, rule)
    assert str(expected) in str(error.value) and str(groups[0][0]) in str(error.value)
    dataset = GroupDataset(groups, 64, 64, rule, check_files=False)
    with pytest.raises(DataError) as error:
        dataset.sample(0, torch.Generator().manual_seed(0))
    picked = next(p for p in groups[0] if p.name in str(error.value))
    assert f"pose image {tmp_path / 'nowhere' / picked.name} not found for {picked}" in str(error.value)
    with pytest.raises(DataError, match="does not occur"):  # the authors fell back to the photo here
        PoseRule(replace=["/image/", "/dwpose/"])(Path("/data/photos/a_1_front.png"))


def test_pose_of_another_aspect_ratio_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "image").mkdir()
    (tmp_path / "dwpose").mkdir()
    Image.new("RGB", (60, 90)).save(tmp_path / "image" / "P-id_1_1_front.png")
    Image.new("RGB", (90, 90)).save(tmp_path / "dwpose" / "P-id_1_1_front.png")
    dataset = GroupDataset([[tmp_path / "image" / "P-id_1_1_front.png"] * 2], 64, 64, PoseRule(template=POSE_TEMPLATE))
    with pytest.raises(DataError, match="same aspect ratio"):
        dataset.sample(0, torch.Generator().manual_seed(0))


def test_build_groups_cli_groups_by_name_and_checks_poses(dataset_json, tmp_path, capsys):
    image_dir = dataset_json.parent / "image"
    (image_dir / "lonely.png").write_bytes((image_dir / next(iter(sorted(p.name for p in image_dir.iterdir())))).read_bytes())
    out = tmp_path / "out" / "groups.json"
    assert data_lib.main(["build-groups", str(image_dir), "--out", str(out), "--pose-template", POSE_TEMPLATE]) == 0
    groups = json.loads(out.read_text())
    names = sorted(sorted(Path(p).name for p in g) for g in groups)
    assert names == [
        ["MEN-Denim-id_00000002-01_1_front.png", "MEN-Denim-id_00000002-01_2_side.png", "MEN-Denim-id_00000002-01_3_back.png"],
        ["WOMEN-Dresses-id_00000001-01_1_front.png", "WOMEN-Dresses-id_00000001-01_2_side.png",
         "WOMEN-Dresses-id_00000001-01_3_back.png"],
    ]
    assert json.loads(capsys.readouterr().out)["unnamed_skipped"] == 1  # lonely.png has no id_view_pose parts
    assert all((out.parent / p).is_file() for g in groups for p in g), "paths are relative to the JSON's folder"
    # a photo without pose: an error naming it, unless explicitly skipped
    pose = dataset_json.parent / "dwpose" / "MEN-Denim-id_00000002-01_3_back.png"
    saved = pose.read_bytes()
    pose.unlink()
    try:
        assert data_lib.main(["build-groups", str(image_dir), "--out", str(out), "--pose-template", POSE_TEMPLATE]) == 1
        assert str(pose) in capsys.readouterr().err
        assert data_lib.main(["build-groups", str(image_dir), "--out", str(out), "--pose-template", POSE_TEMPLATE,
                              "--skip-missing-poses"]) == 0
        assert sum(len(g) for g in json.loads(out.read_text())) == 5
    finally:
        pose.write_bytes(saved)
        (image_dir / "lonely.png").unlink()


def test_grid_inputs_mask_targets_and_flag_sources():
    images = torch.rand(2, 4, 3, 64, 64)
    poses = torch.rand(2, 4, 3, 64, 64)
    roles = torch.tensor([[True, False, False, False], [False, True, True, False]])
    image_grid, masked, pose_grid, flags = grid_inputs(images, poses, roles, downscale=8)
    assert image_grid.shape == masked.shape == pose_grid.shape == (2, 3, 128, 128)
    assert flags.shape == (2, 1, 16, 16)
    assert torch.equal(image_grid[1, :, :64, 64:], images[1, 1]) and torch.equal(pose_grid[0, :, 64:, :64], poses[0, 2])
    assert torch.equal(masked[0, :, :64, :64], images[0, 0]) and masked[0, :, :64, 64:].abs().sum() == 0
    assert masked[1, :, :64, :64].abs().sum() == 0 and torch.equal(masked[1, :, 64:, :64], images[1, 2])
    assert flags[0, 0, :8, :8].eq(1).all() and flags[0, 0, :8, 8:].eq(0).all() and flags[1, 0, 8:, :8].eq(1).all()


def test_min_snr_weights_by_hand():
    alphas_cumprod = torch.tensor([0.99, 0.9, 0.8, 0.0])  # snr 99, 9, 4, 0 -> snr + 1 = 100, 10, 5, 1
    weights = min_snr_weights(alphas_cumprod, torch.arange(4), gamma=5.0)
    assert torch.allclose(weights, torch.tensor([5 / 100, 5 / 10, 1.0, 1.0]))
    # the trainer's schedule: zero terminal SNR, and min(snr+1, 5)/(snr+1) = min(1, 5 * (1 - alpha_bar))
    scheduler = make_noise_scheduler(load_config(CONFIGS / "stage1.yaml")["noise_scheduler"])
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.timestep_spacing == "trailing"
    assert scheduler.alphas_cumprod[-1] == 0
    timesteps = torch.arange(1000)
    by_hand = torch.clamp(5.0 * (1 - scheduler.alphas_cumprod.double()), max=1.0).float()
    assert torch.allclose(min_snr_weights(scheduler.alphas_cumprod, timesteps, 5.0), by_hand, atol=1e-6)


def test_widen_conv_in_keeps_weights_and_zeroes_new_channels():
    weight = torch.randn(32, 4, 3, 3)
    widened = widen_conv_in(weight)
    assert widened.shape == (32, 9, 3, 3)
    assert torch.equal(widened[:, :4], weight) and widened[:, 4:].abs().sum() == 0


def test_stage_configs_follow_the_authors_recipe():
    lrs = {}
    for stage in ("stage1", "stage2", "end2end"):
        config = load_config(CONFIGS / f"{stage}.yaml")
        assert config["stage"] == stage
        train = config["train"]
        assert (train["adam_beta1"], train["adam_beta2"], train["adam_weight_decay"], train["adam_epsilon"]) == (
            0.9, 0.999, 1e-2, 1e-8)
        assert (train["max_grad_norm"], train["snr_gamma"], train["noise_offset"], train["uncond_ratio"]) == (
            1.0, 5.0, 0.05, 0.1)
        assert train["condition_dropout"] == "context" and config["model"]["image_encoder_positions"] == "bicubic-scale-factor"
        assert train["gradient_checkpointing"] is True
        assert config["noise_scheduler"]["beta_schedule"] == "scaled_linear"
        lrs[stage] = (train["learning_rate"], train["max_steps"])
    assert lrs == {"stage1": (5e-5, 50000), "stage2": (5e-5, 200000), "end2end": (1e-6, 50000)}


def test_deepspeed_accelerate_config_matches_stage_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    launch = load_config_from_file(str(CONFIGS / "accelerate_deepspeed_zero2.yaml"))
    assert launch.distributed_type == "DEEPSPEED"
    deepspeed = launch.deepspeed_config
    assert deepspeed["zero_stage"] == 2
    stage1 = load_config(CONFIGS / "stage1.yaml")
    assert deepspeed["gradient_clipping"] == stage1["train"]["max_grad_norm"]
    # the paper's global batch on the file's 8 GPUs needs no accumulation, which is what DeepSpeed is told
    assert (deepspeed["gradient_accumulation_steps"], None) == resolve_batch(stage1, launch.num_processes)
    assert load_config_from_file(str(CONFIGS / "accelerate_multi_gpu.yaml")).distributed_type == "MULTI_GPU"


def test_config_refuses_unknown_keys_and_reads_overrides():
    config = load_config(CONFIGS / "stage1.yaml", ["train.max_steps=7", "data.pose_template=null",
                                                   "data.pose_replace=[/image/, /dwpose/]"])
    assert config["train"]["max_steps"] == 7 and config["data"]["pose_replace"] == ["/image/", "/dwpose/"]
    with pytest.raises(ConfigError, match="train.max_step"):
        load_config(CONFIGS / "stage1.yaml", ["train.max_step=7"])
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(CONFIGS / "stage1.yaml", ["data.pose_replace=[a, b]"])
    with pytest.raises(ConfigError, match="init_checkpoint"):
        load_config(CONFIGS / "stage2.yaml", ["model.init_checkpoint=null"])


def dropout_shares(mode, stage, draws=5000, batch=4, ratio=0.1):
    """Share of samples with (pixels only, reference only, both, whole context) dropped, and per-step counts."""
    generator = torch.Generator().manual_seed(0)
    keeps = [condition_dropout(mode, stage, batch, ratio, generator) for _ in range(draws)]
    pixels = torch.cat([k.pixels for k in keeps]) == 0
    reference = torch.cat([k.reference for k in keeps]) == 0
    context = torch.cat([k.context for k in keeps]) == 0
    shares = {"pixels only": (pixels & ~reference).float().mean().item(),
              "reference only": (reference & ~pixels).float().mean().item(),
              "both": (pixels & reference).float().mean().item(), "context": context.float().mean().item()}
    per_step = {int((k.pixels == 0).sum()) for k in keeps}
    return shares, per_step


@pytest.mark.parametrize("stage", ["stage1", "stage2", "end2end"])
def test_condition_dropout_rates(stage):
    shares, _ = dropout_shares("context", stage)  # the nodes' negative: the whole context, 10 % of samples
    assert abs(shares["context"] - 0.10) < 0.01 and shares["pixels only"] == shares["reference only"] == 0
    shares, per_step = dropout_shares("authors", stage)
    assert shares["context"] == 0
    if stage == "stage1":  # the DINOv2 pixels of the whole batch on 10 % of the steps
        assert per_step == {0, 4} and abs(shares["pixels only"] - 0.10) < 0.015
        assert shares["reference only"] == shares["both"] == 0
    else:  # per sample: DINOv2 pixels, reference latents, or both, 5 % each
        for kind in ("pixels only", "reference only", "both"):
            assert abs(shares[kind] - 0.05) < 0.008, (kind, shares)
        assert len(per_step) > 2
    with pytest.raises(ValueError, match="condition dropout"):
        condition_dropout("pixels", stage, 4, 0.1)


def batch_config(stage="stage1", batch=2, global_batch=None, accumulation=None):
    return {"stage": stage, "data": {"batch_size": batch},
            "train": {"global_batch": global_batch, "gradient_accumulation_steps": accumulation}}


def test_global_batch_keeps_the_papers_batch_on_fewer_gpus():
    assert resolve_batch(batch_config(global_batch=16), processes=8) == (1, None)
    assert resolve_batch(batch_config(global_batch=16), processes=1) == (8, None)
    assert resolve_batch(batch_config("stage2", batch=4, global_batch=32), processes=2) == (4, None)
    accumulation, warning = resolve_batch(batch_config(), processes=1)  # no global batch: says how far off it is
    assert accumulation == 1 and "GLOBAL BATCH 2" in warning and "paper's 16" in warning
    assert "paper's 8" in resolve_batch(batch_config("end2end", batch=1, global_batch=4), processes=1)[1]
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve_batch(batch_config(batch=3, global_batch=16), processes=1)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2 but train.global_batch=16 needs 8"):
        resolve_batch(batch_config(global_batch=16, accumulation=2), processes=1)
    for stage, paper in (("stage1", 16), ("stage2", 32), ("end2end", 8)):
        assert load_config(CONFIGS / f"{stage}.yaml")["train"]["global_batch"] == paper

"""The trainer's three stages run through the real entry point on tiny models and real photos (CPU, a few steps).

Checks what each stage may change, the stage-1 UNet built from an SD1.5-layout UNet, the motion-module
initialisation of stage 2, resuming, and that every written checkpoint loads with the nodes' loader code.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint
import yaml

from imagpose.checkpoints import build_model, load_weights
from imagpose.testing import make_tiny_model
from imagpose.unet import MOTION_KEY
from trainer import export
from trainer import train as train_lib
from trainer.config import DEFAULTS
from trainer.loss import make_noise_scheduler, training_loss
from trainer.models import (SetupError, TrainingNet, load_image_encoder,
                            load_motion_module, load_vae, set_trainable, stage1_model, vae_downscale)
from trainer.testing import tiny_config, write_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return root, write_setup(root)


def weights(checkpoint: Path, fmt: str = "pack", kind: str = "trained"):
    """A checkpoint's weights as the nodes' loader reads them, after `trainer.export` (pack file or authors' files)."""
    name = f"{checkpoint.name}-{kind}"
    out = checkpoint.parent / "exports" / (f"{name}.safetensors" if fmt == "pack" else name)
    if not out.exists():
        assert export.main([str(checkpoint), str(out), "--weights", kind]) == 0
    return load_weights(out)


def flat(w) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part in ("unet", "pose_guider", "patch_embed") for k, v in getattr(w, part).items()}


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def parameters_named(model) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_config(setup, stage, name=None, init=None, motion=None, **train) -> tuple[Path, Path]:
    root, paths = setup
    models = {k: paths[k] for k in ("base_unet", "vae", "image_encoder")}
    config = tiny_config(root, stage, models, paths["groups"], init_checkpoint=init, motion_module=motion, **train)
    config["output_dir"] = str(root / "runs" / (name or stage))
    path = root / f"{name or stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, Path(config["output_dir"])


def run(setup, stage, name=None, init=None, motion=None, **train) -> Path:
    path, output_dir = write_config(setup, stage, name, init, motion, **train)
    assert train_lib.main(["--config", str(path)]) == 0
    return output_dir


def last_checkpoint(run_dir: Path) -> Path:
    return train_lib.checkpoints_in(run_dir)[-1]


@pytest.fixture(scope="module")
def stage1(setup):
    """Step 1 under `accelerate launch` (a subprocess, CPU), then step 2 resumed in this process."""
    path, output_dir = write_config(setup, "stage1", save_initial=True, max_steps=1, checkpointing_steps=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "trainer.train", "--config", str(path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 1 and summary["checkpoints"][-1].endswith("checkpoint-1")
    return run(setup, "stage1", save_initial=True, resume="latest", max_steps=2, checkpointing_steps=1)


@pytest.fixture(scope="module")
def motion_file(setup):
    """An AnimateDiff-v2-style file: only `*.motion_modules.*` tensors, random non-zero values."""
    root, _ = setup
    state = {k: v for k, v in make_tiny_model(seed=3).unet.state_dict().items() if MOTION_KEY in k}
    path = root / "motion_module.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def stage2(setup, stage1, motion_file):
    # --global-batch 4 with batch 2 on one process: 2 accumulation steps per optimisation step
    path, output_dir = write_config(setup, "stage2", init=stage1 / "checkpoint-2", motion=motion_file[0],
                                    save_initial=True, max_steps=1)
    assert train_lib.main(["--config", str(path), "--global-batch", "4"]) == 0
    return output_dir


def test_stage1_widens_conv_in_trains_unet_pose_guider_patch_and_leaves_cva(setup, stage1):
    from diffusers import UNet2DConditionModel

    root, paths = setup
    assert len(losses(stage1)) == 2 and all(torch.isfinite(torch.tensor(losses(stage1))))
    start, end = flat(weights(stage1 / "checkpoint-0")), flat(weights(stage1 / "checkpoint-2"))
    base = UNet2DConditionModel.from_pretrained(str(paths["base_unet"] / "unet")).state_dict()
    conv_in = start["unet.conv_in.weight"]
    assert conv_in.shape[1] == 9
    assert torch.equal(conv_in[:, :4], base["conv_in.weight"]) and conv_in[:, 4:].abs().sum() == 0
    assert all(torch.equal(start[f"unet.{k}"], v) for k, v in base.items() if k != "conv_in.weight")

    model = build_model(weights(stage1 / "checkpoint-2"))
    params = parameters_named(model)
    moved = changed(start, end)
    cva = {k for k in params if MOTION_KEY in k}
    assert cva and not moved & cva, "stage 1 must not touch the CVA modules"
    for part in ("unet.", "pose_guider.", "patch_embed."):
        trained = {k for k in params - cva if k.startswith(part)}
        assert trained <= moved, f"{part} parameters left unchanged: {sorted(trained - moved)[:3]}"
    assert "unet.conv_in.weight" in moved and end["unet.conv_in.weight"][:, 4:].abs().sum() > 0


def test_checkpoints_hold_the_weights_once_and_export_to_both_formats(stage1, tmp_path):
    checkpoint = stage1 / "checkpoint-2"
    assert not list(stage1.glob(".checkpoint-*")), "no partial checkpoint folder may remain"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state", "trainer_state.json"]
    assert not list(checkpoint.rglob("*.pth")) and [p.name for p in checkpoint.rglob("*.safetensors")] == ["model.safetensors"]
    # on demand: the command line of `python -m trainer.export`, to the pack file and to the authors' files
    assert export.main([str(checkpoint), str(tmp_path / "pack.safetensors")]) == 0
    assert export.main([str(checkpoint), str(tmp_path / "authors")]) == 0
    assert sorted(p.name for p in (tmp_path / "authors").iterdir()) == [
        "denoising_unet-2.pth", "patch-2.pth", "pose_guider-2.pth"]
    pack, authors = load_weights(tmp_path / "pack.safetensors"), load_weights(tmp_path / "authors")
    assert not changed(flat(pack), flat(authors))
    assert pack.image_encoder_positions == "bicubic-scale-factor"
    # the end of the stage wrote the pack file from the same weights
    assert not changed(flat(load_weights(stage1 / "imagpose-stage1-2.safetensors")), flat(pack))
    torch.manual_seed(0)
    sample, context, pose = torch.randn(1, 9, 16, 16), torch.randn(1, 261, 64), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out_pack = build_model(pack)(sample, torch.tensor([500]), context, pose)
        out_authors = build_model(authors)(sample, torch.tensor([500]), context, pose)
        assert torch.equal(out_pack, out_authors) and out_pack.abs().sum() > 0
    assert export.main([str(stage1), str(tmp_path / "x.safetensors")]) == 2  # a run folder is not a checkpoint


def test_stage2_initialises_cva_from_motion_module_and_trains_only_cva(stage1, stage2, motion_file):
    _, motion = motion_file
    stage1_end = flat(weights(stage1 / "checkpoint-2"))
    start, end = flat(weights(stage2 / "checkpoint-0")), flat(weights(last_checkpoint(stage2)))
    assert all(torch.equal(start[f"unet.{k}"], v) for k, v in motion.items())
    assert all(torch.equal(start[k], v) for k, v in stage1_end.items() if MOTION_KEY not in k)
    assert all(torch.isfinite(torch.tensor(losses(stage2))))
    moved = changed(start, end)
    cva = {k for k in parameters_named(build_model(weights(last_checkpoint(stage2)))) if MOTION_KEY in k}
    assert moved == cva, f"stage 2 changed non-CVA {sorted(moved - cva)[:3]} / left CVA {sorted(cva - moved)[:3]}"
    assert json.loads((stage2 / "config.json").read_text())["train"]["gradient_accumulation_steps"] == 2


def test_stage2_without_motion_module_warns_and_keeps_stage1_cva(setup, stage1, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer"):
        out = run(setup, "stage2", name="stage2_fresh", init=stage1 / "checkpoint-2", save_initial=True, max_steps=0)
    assert "without model.motion_module" in caplog.text
    assert not changed(flat(weights(stage1 / "checkpoint-2")), flat(weights(out / "checkpoint-0")))


def test_end2end_trains_every_part_with_an_ema_kept_across_a_resume(setup, stage2):
    """EMA (diffusers' EMAModel): saved in each checkpoint, restored on resume, exported as the stage's pack file;
    the retention limit keeps the newest checkpoints."""
    init = last_checkpoint(stage2)
    options = {"ema": True, "checkpointing_steps": 1, "checkpoints_keep": 2}
    out = run(setup, "end2end", init=init, save_initial=True, max_steps=1, **options)
    out = run(setup, "end2end", init=init, resume="latest", max_steps=2, **options)
    assert [p.name for p in train_lib.checkpoints_in(out)] == ["checkpoint-1", "checkpoint-2"]  # checkpoint-0 retired
    assert (out / "checkpoint-2" / export.EMA_FILE).is_file()
    start, one, two = flat(weights(init)), flat(weights(out / "checkpoint-1")), flat(weights(out / "checkpoint-2"))
    assert not changed(flat(weights(last_checkpoint(stage2))), start)
    params = parameters_named(build_model(weights(out / "checkpoint-2")))
    assert params <= changed(start, one) and params <= changed(one, two)
    assert all(torch.isfinite(torch.tensor(losses(out))))
    # diffusers' EMA: a copy at step 1, then decay (1 + 1) / (10 + 1) at step 2 (restored from checkpoint-1's state)
    ema = flat(weights(out / "checkpoint-2", kind="ema"))
    decay = 2 / 11
    for name in params:
        assert torch.allclose(ema[name], decay * one[name] + (1 - decay) * two[name], atol=1e-6), name
    assert changed(ema, two) == params
    pack = out / "imagpose-end2end-2.safetensors"
    assert not changed(flat(load_weights(pack)), ema)
    first_ema = flat(weights(out / "checkpoint-1", kind="ema"))  # step 1: a copy (up to float rounding)
    assert all(torch.allclose(first_ema[k], one[k], atol=1e-6) for k in one)


def test_launched_run_resumes_from_the_latest_checkpoint(stage1):
    steps = [json.loads(line)["step"] for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # step 1 from the launched process, step 2 after resuming its checkpoint-1
    assert sorted(p.name for p in train_lib.checkpoints_in(stage1)) == ["checkpoint-0", "checkpoint-1", "checkpoint-2"]
    assert json.loads((stage1 / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2
    state = stage1 / "checkpoint-1" / "state"
    assert (state / "optimizer.bin").is_file() and (state / "scheduler.bin").is_file()
    assert changed(flat(weights(stage1 / "checkpoint-1")), flat(weights(stage1 / "checkpoint-2")))


@pytest.fixture(scope="module")
def parts(setup):
    _, paths = setup
    return load_vae(paths["vae"]), load_image_encoder(paths["image_encoder"])


def sample_batch(setup, samples: int = 1):
    from trainer.data import GroupDataset

    root, paths = setup
    config = tiny_config(root, "stage1", paths, paths["groups"])
    dataset = GroupDataset.from_config(config["data"])
    samples = [dataset.sample(i % len(dataset), torch.Generator().manual_seed(i)) for i in range(samples)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def test_gradient_checkpointing_gives_the_same_gradients(setup, parts):
    _, paths = setup
    vae, encoder = parts
    batch = sample_batch(setup)
    scheduler = make_noise_scheduler(DEFAULTS["noise_scheduler"])
    train = {"noise_offset": 0.05, "uncond_ratio": 0.0, "snr_gamma": 5.0, "condition_dropout": "context"}
    grads = []
    recomputed = []

    def counting_checkpoint(module, *args):
        recomputed.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)

    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = stage1_model(paths["base_unet"], [16, 16, 32, 32], 4)
        with torch.no_grad():  # non-zero pose guider output so its gradient path is exercised too
            model.pose_guider.conv_out.weight.normal_(0, 0.1)
        if checkpointing:
            model.unet.enable_gradient_checkpointing(counting_checkpoint)
        net = TrainingNet(model, use_cva=True).train()
        torch.manual_seed(1)
        loss, _ = training_loss(net, batch, vae, encoder, scheduler, train, vae_downscale(vae), "stage1")
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert {"ResnetBlock2D", "BasicTransformerBlock", "CrossViewAttention"} <= set(recomputed)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-6), name


def test_unconditional_samples_get_the_nodes_zero_context():
    model = make_tiny_model(seed=2)
    net = TrainingNet(model, use_cva=True).eval()
    torch.manual_seed(0)
    sample, embeds, ref, pose = torch.randn(2, 9, 16, 16), torch.randn(2, 257, 64), torch.randn(2, 4, 8, 8), torch.rand(2, 3, 128, 128)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        out = net(sample, t, embeds, ref, pose, keep=torch.tensor([1.0, 0.0]))
        context = model.context(embeds, ref)
        assert context[1].abs().sum() > 0
        negative = torch.cat([context[:1], torch.zeros_like(context[1:])])
        assert torch.allclose(out, model(sample, t, negative, pose), atol=1e-6)


def test_missing_model_folders_are_named(setup, tmp_path, capsys):
    root, paths = setup
    config = tiny_config(root, "stage1", {**paths, "base_unet": tmp_path / "sd15"}, paths["groups"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert train_lib.main(["--config", str(path)]) == 2
    assert f"{tmp_path / 'sd15'}/unet/config.json" in capsys.readouterr().err
    with pytest.raises(SetupError, match=f"{tmp_path}/config.json"):
        load_vae(tmp_path)


def test_motion_module_that_does_not_fit_is_refused(motion_file, tmp_path):
    _, motion = motion_file
    unet = make_tiny_model(seed=0).unet
    partial = dict(list(motion.items())[5:])
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(SetupError, match="does not fit"):
        load_motion_module(unet, tmp_path / "partial.pth")
    torch.save({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, tmp_path / "none.pth")
    with pytest.raises(SetupError, match="no \\*.motion_modules"):
        load_motion_module(unet, tmp_path / "none.pth")


def test_set_trainable_per_stage():
    model = make_tiny_model(seed=0)
    names = parameters_named(model)
    cva = {n for n in names if MOTION_KEY in n}
    expected = {"stage1": names - cva, "stage2": cva, "end2end": names}
    for stage, wanted in expected.items():
        trainable = set_trainable(model, stage)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted, stage
        assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in wanted}


def test_8bit_adamw_on_cpu_is_a_clear_error(setup, capsys):
    path, _ = write_config(setup, "stage1", name="adam8", optimizer="adamw8bit")
    assert train_lib.main(["--config", str(path)]) == 2
    assert "train.optimizer=adamw8bit needs a CUDA GPU" in capsys.readouterr().err


def test_training_loss_drops_each_condition_where_it_is_told(setup, parts, monkeypatch):
    """'authors' dropout: zero DINOv2 pixels, zero reference latents; 'context': the whole FLC context."""
    from imagpose.training import ConditionKeep
    from trainer import loss as loss_lib

    vae, encoder = parts
    batch = sample_batch(setup, samples=3)
    keep = ConditionKeep(context=torch.tensor([1.0, 1.0, 0.0]), pixels=torch.tensor([0.0, 1.0, 1.0]),
                         reference=torch.tensor([1.0, 0.0, 1.0]))
    monkeypatch.setattr(loss_lib, "condition_dropout", lambda *args: keep)
    pixels, seen = [], {}
    hook = encoder.register_forward_pre_hook(lambda module, args: pixels.append(args[0]))

    class Recorder(torch.nn.Module):
        def forward(self, sample, timesteps, image_embeds, reference_latents, pose_grid, keep_context):
            seen.update(embeds=image_embeds, reference=reference_latents, keep=keep_context)
            return torch.zeros_like(sample[:, :4])

    train = {"noise_offset": 0.0, "uncond_ratio": 0.1, "snr_gamma": 5.0, "condition_dropout": "authors"}
    try:
        loss_lib.training_loss(Recorder(), batch, vae, encoder, make_noise_scheduler(DEFAULTS["noise_scheduler"]),
                               train, vae_downscale(vae), "stage2")
    finally:
        hook.remove()
    (fed,) = pixels
    assert fed[0].abs().sum() == 0 and fed[1].abs().sum() > 0 and fed[2].abs().sum() > 0
    assert seen["reference"][1].abs().sum() == 0 and seen["reference"][0].abs().sum() > 0
    assert torch.equal(seen["keep"], keep.context)
    assert not torch.allclose(seen["embeds"][0], torch.zeros_like(seen["embeds"][0]))  # DINOv2 of a zero input

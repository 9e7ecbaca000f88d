"""Trainer configuration: YAML files over built-in defaults, plus `section.key=value` command-line overrides.

Unknown keys are refused (a typo must not silently train with a default).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from imagpose.image_encoder import POSITION_METHODS
from imagpose.training import CONDITION_DROPOUTS

STAGES = ("stage1", "stage2", "end2end")
OPTIMIZERS = ("adamw", "adamw8bit")
PAPER_GLOBAL_BATCH = {"stage1": 16, "stage2": 32, "end2end": 8}  # 8 GPUs x 2 / 4 / 1 per GPU (authors' configs)

DEFAULTS: dict[str, Any] = {
    "stage": "stage1",
    "output_dir": "./runs/stage1",
    "seed": 12580,
    "model": {
        # stage1: a diffusers SD1.5 folder (holding unet/), the UNet folder itself, or the SD1.5 single file
        # ComfyUI keeps (v1-5-pruned-emaonly.safetensors / .ckpt, original ldm key names)
        "base_unet": None,
        # stage2/end2end: a trainer checkpoint folder, a pack .safetensors, or an authors' denoising_unet-N.pth
        "init_checkpoint": None,
        # stage2: AnimateDiff-v2-style motion module (down_blocks.N.motion_modules.M.* keys), e.g. mm_sd_v15_v2.ckpt
        # as published or a .safetensors; optional
        "motion_module": None,
        # diffusers AutoencoderKL folder (sd-vae-ft-mse), its weights file, an ldm VAE file, or the SD1.5 single file
        "vae": None,
        "image_encoder": None,  # transformers Dinov2Model folder (or one .safetensors file), e.g. dinov2-base
        # how DINOv2's position table is resampled to the 224 px grid (imagpose.image_encoder.POSITION_METHODS);
        # recorded in the pack file so the nodes use the same
        "image_encoder_positions": "bicubic-scale-factor",
        "pose_guider_channels": [16, 32, 96, 256],
        "patch_size": 16,
        "cva": {"heads": 8, "blocks": 1, "attentions": 2, "max_len": 32},
    },
    "data": {
        "groups": None,  # JSON list of groups (lists of image paths), see trainer/README.md
        "root": None,  # relative image paths resolve against this; default: the JSON file's folder
        "pose_template": None,  # e.g. "{dir}/../dwpose/{stem}.png"
        "pose_replace": None,  # e.g. ["/image/", "/dwpose/"]: substring replaced in the image path
        "cell_height": 768,
        "cell_width": 512,
        "flip_prob": 0.5,
        "batch_size": 2,
        "num_workers": 4,
        "check_files": True,
    },
    "train": {
        "max_steps": 50000,
        "learning_rate": 5.0e-5,
        "scale_lr": False,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 1,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_weight_decay": 1.0e-2,
        "adam_epsilon": 1.0e-8,
        "max_grad_norm": 1.0,
        # samples per optimisation step over all processes = data.batch_size x processes x accumulation steps.
        # With global_batch set, the accumulation is derived from it (fewer GPUs keep the paper's batch); null:
        # gradient_accumulation_steps as given (default 1) and a warning at start when that deviates from the paper
        "global_batch": None,
        "gradient_accumulation_steps": None,
        "optimizer": "adamw",  # "adamw" (torch) or "adamw8bit" (bitsandbytes, CUDA GPUs only)
        "ema": False,  # keep an exponential moving average of the trained weights (diffusers' EMAModel)
        "ema_decay": 0.9999,
        "gradient_checkpointing": True,
        "mixed_precision": None,  # None: whatever `accelerate launch` / its config says; "no" | "fp16" | "bf16"
        "allow_tf32": True,
        "snr_gamma": 5.0,  # 0 disables min-SNR weighting
        "noise_offset": 0.05,
        "uncond_ratio": 0.1,
        # "context": the whole FLC context zeroed per sample (the nodes' negative); "authors": stage 1 zeroes the
        # DINOv2 pixels of a ratio of the steps, stages 2/end2end the DINOv2 pixels, the reference latents or both
        # per sample (ratio / 2 each), as the authors' scripts (imagpose.training.condition_dropout)
        "condition_dropout": "context",
        "checkpointing_steps": 5000,
        "checkpoints_keep": 3,  # None keeps every checkpoint
        "save_initial": False,  # also write checkpoint-0: the weights training starts from
        "resume": None,  # "latest" or a checkpoint-N folder
        "log_every": 10,
        "report_to": "tensorboard",  # accelerate tracker(s): "tensorboard", "wandb", a list, or null for none
        "progress_bar": True,  # tqdm bar with ETA on the main process
    },
    # sheets of fixed groups generated every N steps with the evaluation's sampling (trainer/validation.py)
    "validation": {
        "every_steps": 1000,  # 0 disables
        "groups": None,  # a group JSON (e.g. trainer.prepare's test-groups.json); default: the first training groups
        "count": 4,  # groups on a sheet
        "targets": 3,  # targets per group (1 -> N grid)
        "steps": 20,
        "cfg": 2.0,
        "seed": 42,
        "fit": "pad",
    },
    "noise_scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    },
}

# keys whose value is a free-form mapping (not checked key by key)
FREE_FORM = {("model", "cva")}


class ConfigError(ValueError):
    pass


def _merge(base: dict, update: dict, path: tuple[str, ...] = ()) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        where = ".".join((*path, key))
        if key not in base:
            raise ConfigError(f"unknown config key {where!r}; known here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and (*path, key) not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, (*path, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict:
    """'train.max_steps=10' -> {'train': {'max_steps': 10}} (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a YAML mapping")
        config = _merge(config, loaded)
    for override in overrides:
        config = _merge(config, parse_override(override))
    validate(config)
    return config


def validate(config: dict) -> None:
    if config["stage"] not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {config['stage']!r}")
    model, data, train = config["model"], config["data"], config["train"]
    if config["stage"] == "stage1" and not model["base_unet"]:
        raise ConfigError("stage1 needs model.base_unet: a diffusers SD1.5 folder (with unet/) or its UNet folder")
    if config["stage"] != "stage1" and not model["init_checkpoint"]:
        raise ConfigError(f"{config['stage']} needs model.init_checkpoint: the previous stage's checkpoint-N folder")
    for key in ("vae", "image_encoder"):
        if not model[key]:
            raise ConfigError(f"model.{key} is required (a local folder; no model hub is contacted)")
    if not data["groups"]:
        raise ConfigError("data.groups is required: the group JSON (python -m trainer.data build-groups ...)")
    if bool(data["pose_template"]) == bool(data["pose_replace"]):
        raise ConfigError("set exactly one of data.pose_template and data.pose_replace (how to find each pose image)")
    for key in ("cell_height", "cell_width"):
        if data[key] % 64:
            raise ConfigError(f"data.{key} must be a multiple of 64 px (latent /8, split down the UNet), got {data[key]}")
    if not 0.0 <= train["uncond_ratio"] < 1.0:
        raise ConfigError(f"train.uncond_ratio must be in [0, 1), got {train['uncond_ratio']}")
    if train["mixed_precision"] not in (None, "no", "fp16", "bf16"):
        raise ConfigError(f"train.mixed_precision must be null, 'no', 'fp16' or 'bf16', got {train['mixed_precision']!r}")
    if train["condition_dropout"] not in CONDITION_DROPOUTS:
        raise ConfigError(f"train.condition_dropout must be one of {', '.join(CONDITION_DROPOUTS)}, "
                          f"got {train['condition_dropout']!r}")
    if model["image_encoder_positions"] not in POSITION_METHODS:
        raise ConfigError(f"model.image_encoder_positions must be one of {', '.join(POSITION_METHODS)}, "
                          f"got {model['image_encoder_positions']!r}")
    if train["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {train['optimizer']!r}")
    accumulation = train["gradient_accumulation_steps"]
    if accumulation is not None and (not isinstance(accumulation, int) or accumulation < 1):
        raise ConfigError(f"train.gradient_accumulation_steps must be a positive integer or null, got {accumulation!r}")
    if train["global_batch"] is not None and (not isinstance(train["global_batch"], int) or train["global_batch"] < 1):
        raise ConfigError(f"train.global_batch must be a positive number of samples or null, got {train['global_batch']!r}")
    if not 0.0 < train["ema_decay"] < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1), got {train['ema_decay']}")
    validation = config["validation"]
    if validation["every_steps"] and not 1 <= validation["targets"] <= 3:
        raise ConfigError(f"validation.targets must be 1..3 (one source and up to three targets), got {validation['targets']}")
    if validation["fit"] not in ("pad", "crop"):
        raise ConfigError(f"validation.fit must be 'pad' or 'crop', got {validation['fit']!r}")
    if train["snr_gamma"] < 0:
        raise ConfigError(f"train.snr_gamma must be >= 0 (0 disables it), got {train['snr_gamma']}")


def resolve_batch(config: dict, processes: int) -> tuple[int, str | None]:
    """(gradient accumulation steps, warning or None) for this many processes.

    With train.global_batch: the accumulation that reaches it exactly (a ConfigError when none does, or when an
    explicit gradient_accumulation_steps disagrees). The warning states any deviation from the paper's batch.
    """
    train, batch = config["train"], config["data"]["batch_size"]
    wanted, accumulation = train["global_batch"], train["gradient_accumulation_steps"]
    if wanted is not None:
        per_step = batch * processes
        if wanted % per_step:
            raise ConfigError(f"train.global_batch={wanted} is not a multiple of data.batch_size x processes = "
                              f"{batch} x {processes} = {per_step}; change one of them")
        if accumulation is not None and accumulation != wanted // per_step:
            raise ConfigError(f"train.gradient_accumulation_steps={accumulation} but train.global_batch={wanted} needs "
                              f"{wanted // per_step} with {processes} process(es) x batch {batch}; set one of them")
        accumulation = wanted // per_step
    accumulation = accumulation or 1
    effective, paper = batch * processes * accumulation, PAPER_GLOBAL_BATCH[config["stage"]]
    warning = None
    if effective != paper:
        warning = (f"GLOBAL BATCH {effective} (data.batch_size {batch} x {processes} process(es) x {accumulation} "
                   f"accumulation steps) differs from the paper's {paper} for {config['stage']}: the learning rate and "
                   f"step counts were tuned for {paper}; set train.global_batch={paper} to accumulate gradients")
    return accumulation, warning

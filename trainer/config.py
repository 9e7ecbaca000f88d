"""Trainer configuration: YAML files over built-in defaults, plus `section.key=value` command-line overrides.

Unknown keys are refused (a typo must not silently train with a default).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

STAGES = ("stage1", "stage2", "end2end")

DEFAULTS: dict[str, Any] = {
    "stage": "stage1",
    "output_dir": "./runs/stage1",
    "seed": 12580,
    "model": {
        # stage1: a diffusers SD1.5 folder (holding unet/) or the UNet folder itself (config.json + weights)
        "base_unet": None,
        # stage2/end2end: a trainer checkpoint folder, a pack .safetensors, or an authors' denoising_unet-N.pth
        "init_checkpoint": None,
        # stage2: AnimateDiff-v2-style motion module (down_blocks.N.motion_modules.M.* keys); optional
        "motion_module": None,
        "vae": None,  # diffusers AutoencoderKL folder, e.g. sd-vae-ft-mse
        "image_encoder": None,  # transformers Dinov2Model folder (or one .safetensors file), e.g. dinov2-base
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
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": True,
        "mixed_precision": None,  # None: whatever `accelerate launch` / its config says; "no" | "fp16" | "bf16"
        "allow_tf32": True,
        "snr_gamma": 5.0,  # 0 disables min-SNR weighting
        "noise_offset": 0.05,
        "uncond_ratio": 0.1,
        "checkpointing_steps": 5000,
        "checkpoints_keep": 3,  # None keeps every checkpoint
        "save_initial": False,  # also write checkpoint-0: the weights training starts from
        "resume": None,  # "latest" or a checkpoint-N folder
        "log_every": 10,
        "report_to": None,  # an accelerate tracker name such as "tensorboard"
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
    if train["snr_gamma"] < 0:
        raise ConfigError(f"train.snr_gamma must be >= 0 (0 disables it), got {train['snr_gamma']}")

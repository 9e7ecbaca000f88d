"""IMAGPose training, all three stages, on HuggingFace accelerate (single GPU, DDP or DeepSpeed by its config).

    python -m trainer.train --config trainer/configs/stage1.yaml [section.key=value ...]
    accelerate launch [--config_file trainer/configs/accelerate_deepspeed_zero2.yaml] \
        -m trainer.train --config trainer/configs/stage1.yaml

Writes OUTPUT_DIR/checkpoint-N/ (atomically: built as .checkpoint-N.partial, then renamed), the weights once:
    state/                         accelerate state (model, optimizer, scheduler, RNG) for train.resume
    ema.safetensors                with train.ema: the moving average of the trained weights
    trainer_state.json
OUTPUT_DIR/imagpose-STAGE-N.safetensors at the last step (the pack file the ComfyUI loader reads; any checkpoint
gives one with `python -m trainer.export`), and OUTPUT_DIR/metrics.jsonl (one line per optimisation step).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from imagpose.checkpoints import pack_config

from . import export
from .config import ConfigError, load_config, resolve_batch
from .data import DataError, GroupDataset
from .loss import make_noise_scheduler, training_loss
from .models import (SetupError, TrainingNet, check_compatible, load_image_encoder,
                     load_motion_module, load_vae, set_trainable, stage1_model, trained_model, vae_downscale)
from .validation import Validator

logger = logging.getLogger("trainer")
CHECKPOINT_PREFIX = "checkpoint-"


def build_model(config: dict):
    model_cfg = config["model"]
    if config["stage"] == "stage1":
        return stage1_model(model_cfg["base_unet"], model_cfg["pose_guider_channels"], model_cfg["patch_size"],
                            model_cfg["cva"])
    model = trained_model(model_cfg["init_checkpoint"])
    if config["stage"] == "stage2":
        if model_cfg["motion_module"]:
            count = load_motion_module(model.unet, model_cfg["motion_module"])
            logger.info("CVA initialised from %s (%d tensors)", model_cfg["motion_module"], count)
        else:
            logger.warning("stage2 without model.motion_module: CVA starts from the checkpoint's modules (fresh ones "
                           "after stage 1: zero output projections, i.e. the identity). The authors start from an "
                           "AnimateDiff-v2-style motion_module.pth.")
    elif model_cfg["motion_module"]:
        raise ConfigError("model.motion_module is for stage2 only (end2end continues from the stage-2 checkpoint)")
    return model


def checkpoints_in(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(CHECKPOINT_PREFIX + "*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def trained_names(model) -> list[str]:
    """Names (pack keys) of the trained parameters, in the order of the optimizer's and EMA's parameter list."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def ema_state(ema, names: list[str]) -> dict[str, torch.Tensor]:
    return dict(zip(names, ema.shadow_params, strict=True))


def save_ema(ema, names: list[str], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in ema_state(ema, names).items()}
    save_file(tensors, str(path), metadata={"optimization_step": str(ema.optimization_step), "decay": str(ema.decay)})


def load_ema(ema, names: list[str], path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        step = int((handle.metadata() or {}).get("optimization_step", 0))
        shadow = [handle.get_tensor(name) for name in names]
    state = ema.state_dict()
    state.update(shadow_params=shadow, optimization_step=step)
    ema.load_state_dict(state)


def save_checkpoint(accelerator, net, config: dict, step: int, ema=None) -> Path:
    """Write checkpoint-N atomically; every process must call this (accelerate's state saving is collective)."""
    output_dir = Path(config["output_dir"])
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temp = output_dir / f".{CHECKPOINT_PREFIX}{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp / export.STATE_DIR))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(net).model
        if ema is not None:
            save_ema(ema, trained_names(model), temp / export.EMA_FILE)
        state = {"step": step, "config": config, "pack_config": pack_config(model)}
        (temp / export.TRAINER_STATE).write_text(json.dumps(state, indent=2, default=list))
        if final.exists():  # the same step written again (a re-run): replace it whole
            old = output_dir / f".{CHECKPOINT_PREFIX}{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(temp, final)
            shutil.rmtree(old)
        else:
            os.replace(temp, final)
        keep = config["train"]["checkpoints_keep"]
        if keep:
            for stale in checkpoints_in(output_dir)[:-keep]:
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


def write_stage_pack(run: "Run") -> Path | None:
    """OUTPUT_DIR/imagpose-STAGE-N.safetensors from the weights in memory (the EMA ones with train.ema), on the
    main process: the file to copy into ComfyUI's models/imagpose/."""
    if not run.accelerator.is_main_process:
        return None
    model = run.accelerator.unwrap_model(run.net).model
    tensors, weights = model.state_dict(), "trained"
    if run.ema is not None:
        tensors = {**tensors, **{k: v.to(tensors[k].dtype) for k, v in ema_state(run.ema, trained_names(model)).items()}}
        weights = "ema"
    path = Path(run.config["output_dir"]) / f"imagpose-{run.config['stage']}-{run.step}.safetensors"
    return export.write(tensors, {"step": run.step, "config": run.config, "pack_config": pack_config(model),
                                  "exported_weights": weights}, path)


def resume_path(config: dict) -> Path | None:
    resume = config["train"]["resume"]
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints_in(Path(config["output_dir"]))
        if not found:
            logger.info("train.resume=latest: no checkpoint in %s yet, starting from step 0", config["output_dir"])
        return found[-1] if found else None
    path = Path(resume)
    if not export.is_checkpoint(path):
        raise ConfigError(f"train.resume: {path} is not a trainer checkpoint folder ({export.STATE_DIR}/ and "
                          f"{export.TRAINER_STATE})")
    return path


def check_trackers(report_to) -> None:
    """A requested tracker whose package is missing is an error (accelerate would drop it silently)."""
    from accelerate.tracking import get_available_trackers

    wanted = [report_to] if isinstance(report_to, str) else list(report_to or [])
    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in wanted if t != "all" and t not in available]
    if missing:
        raise ConfigError(f"train.report_to: tracker(s) {missing} are not installed (pip install {' '.join(missing)}), "
                          "or set train.report_to=null")


def check_deepspeed(accelerator, train: dict) -> None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for ours, theirs in (("gradient_accumulation_steps", "gradient_accumulation_steps"),
                         ("max_grad_norm", "gradient_clipping")):
        value = ds.get(theirs)
        if value not in (None, "auto") and float(value) != float(train[ours]):
            raise ConfigError(f"DeepSpeed config {theirs}={value} but train.{ours}={train[ours]}: make them equal "
                              "(DeepSpeed applies its own value)")


@dataclass
class Run:
    """Everything one training run holds between setup and the loop."""

    config: dict
    accelerator: object
    net: TrainingNet
    trainable: list
    optimizer: object
    lr_scheduler: object
    loader: object
    noise_scheduler: object
    vae: object
    encoder: object
    downscale: int
    model_dtype: torch.dtype
    ema: object | None = None  # diffusers EMAModel over `trainable` (train.ema)
    step: int = 0


def setup(config: dict) -> Run:
    """Accelerator, frozen encoders, the stage's model, data, optimizer; state restored when resuming."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    train_cfg = config["train"]
    output_dir = Path(config["output_dir"])
    train_cfg["gradient_accumulation_steps"], batch_warning = resolve_batch(config, PartialState().num_processes)
    check_trackers(train_cfg["report_to"])
    accelerator = Accelerator(
        gradient_accumulation_steps=train_cfg["gradient_accumulation_steps"],
        mixed_precision=train_cfg["mixed_precision"],
        log_with=train_cfg["report_to"],
        project_dir=str(output_dir),
    )
    check_deepspeed(accelerator, train_cfg)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if batch_warning and accelerator.is_main_process:
        logger.warning(batch_warning)
    if train_cfg["optimizer"] == "adamw8bit" and accelerator.device.type != "cuda":
        raise ConfigError(f"train.optimizer=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit AdamW); this run is on "
                          f"{accelerator.device.type}: use train.optimizer=adamw")
    if config["seed"] is not None:
        set_seed(config["seed"], device_specific=True)
    if train_cfg["allow_tf32"] and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config, indent=2))

    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae = load_vae(config["model"]["vae"]).to(accelerator.device)
    encoder = load_image_encoder(config["model"]["image_encoder"],
                                 config["model"]["image_encoder_positions"]).to(accelerator.device)
    if frozen_dtype != torch.float32:
        vae, encoder = vae.to(dtype=frozen_dtype), encoder.to(dtype=frozen_dtype)
    model = build_model(config)
    check_compatible(model, vae, encoder)
    trainable = set_trainable(model, config["stage"])
    if train_cfg["gradient_checkpointing"]:
        model.unet.enable_gradient_checkpointing()
    net = TrainingNet(model, use_cva=config["stage"] != "stage1").train()

    dataset = GroupDataset.from_config(config["data"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=config["data"]["batch_size"], shuffle=True,
                                         num_workers=config["data"]["num_workers"], drop_last=True,
                                         persistent_workers=config["data"]["num_workers"] > 0)
    if len(loader) == 0:
        raise DataError(f"{len(dataset)} groups make no full batch of {config['data']['batch_size']}")

    learning_rate = train_cfg["learning_rate"]
    if train_cfg["scale_lr"]:
        learning_rate *= train_cfg["gradient_accumulation_steps"] * config["data"]["batch_size"] * accelerator.num_processes
    optimizer = optimizer_class(train_cfg["optimizer"])(
        trainable, lr=learning_rate, betas=(train_cfg["adam_beta1"], train_cfg["adam_beta2"]),
        weight_decay=train_cfg["adam_weight_decay"], eps=train_cfg["adam_epsilon"])
    ema = None
    if train_cfg["ema"]:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=train_cfg["ema_decay"])
        ema.to(accelerator.device)
    lr_scheduler = get_scheduler(train_cfg["lr_scheduler"], optimizer=optimizer,
                                 num_warmup_steps=train_cfg["lr_warmup_steps"] * accelerator.num_processes,
                                 num_training_steps=train_cfg["max_steps"] * accelerator.num_processes)
    net, optimizer, loader, lr_scheduler = accelerator.prepare(net, optimizer, loader, lr_scheduler)
    run = Run(config, accelerator, net, trainable, optimizer, lr_scheduler, loader,
              make_noise_scheduler(config["noise_scheduler"]), vae, encoder, vae_downscale(vae),
              next(accelerator.unwrap_model(net).parameters()).dtype, ema)  # fp16 under DeepSpeed fp16, else fp32

    resume = resume_path(config)
    if resume is not None:
        accelerator.load_state(str(resume / export.STATE_DIR))
        run.step = json.loads((resume / export.TRAINER_STATE).read_text())["step"]
        if ema is not None:
            if not (resume / export.EMA_FILE).is_file():
                raise ConfigError(f"train.ema is on but {resume} holds no {export.EMA_FILE} (that run had it off)")
            load_ema(ema, trained_names(model), resume / export.EMA_FILE)
        logger.info("resumed from %s at step %d", resume, run.step)
    if accelerator.is_main_process:
        if train_cfg["report_to"]:
            accelerator.init_trackers(f"imagpose-{config['stage']}", config={"stage": config["stage"]})
        logger.info("%s: %d trainable tensors (%.1fM values), %d groups, %d process(es) x batch %d x %d accumulation "
                    "steps = %d samples per step, mixed precision %s, optimizer %s%s", config["stage"], len(trainable),
                    sum(p.numel() for p in trainable) / 1e6, len(dataset), accelerator.num_processes,
                    config["data"]["batch_size"], train_cfg["gradient_accumulation_steps"],
                    accelerator.num_processes * config["data"]["batch_size"] * train_cfg["gradient_accumulation_steps"],
                    accelerator.mixed_precision, train_cfg["optimizer"], ", EMA" if ema is not None else "")
    return run


def optimizer_class(name: str):
    """torch's AdamW, or bitsandbytes' 8-bit AdamW (same arguments)."""
    if name == "adamw":
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError as error:
        raise ConfigError(f"train.optimizer={name} needs bitsandbytes: pip install bitsandbytes ({error})") from error
    return bitsandbytes.optim.AdamW8bit


class MetricsWriter:
    """metrics.jsonl (one line per optimisation step), the accelerate tracker, the log and the progress bar (with
    ETA), on the main process."""

    def __init__(self, run: Run):
        from tqdm.auto import tqdm

        self.run = run
        self.path = Path(run.config["output_dir"]) / "metrics.jsonl"
        self.started = time.time()
        train_cfg = run.config["train"]
        self.bar = tqdm(total=train_cfg["max_steps"], initial=run.step, desc=run.config["stage"], unit="step",
                        dynamic_ncols=True,
                        disable=not (run.accelerator.is_main_process and train_cfg["progress_bar"]))
        if run.accelerator.is_main_process and self.path.is_file():
            self._forget_after(run.step)

    def close(self) -> None:
        self.bar.close()

    def _forget_after(self, step: int) -> None:
        """A resumed run redoes the steps after its checkpoint: drop their old lines, one line per step stays."""
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text("".join(line + "\n" for line in kept))
            os.replace(partial, self.path)

    def write(self, step: int, loss: float) -> None:
        run, train_cfg = self.run, self.run.config["train"]
        if not run.accelerator.is_main_process:
            return
        record = {"step": step, "loss": loss, "lr": run.lr_scheduler.get_last_lr()[0],
                  "seconds": round(time.time() - self.started, 3)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if train_cfg["report_to"]:
            run.accelerator.log({"loss": loss, "lr": record["lr"]}, step=step)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step % train_cfg["log_every"] == 0 or step == 1:
            logger.info("step %d loss %.5f lr %.3g", step, loss, record["lr"])


def validate(run: Run, validator: Validator | None) -> None:
    """A validation sheet on the main process when one is due; the others wait for it."""
    if validator is None or not validator.due(run.step):
        return
    accelerator = run.accelerator
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(run.net)
        with accelerator.autocast():
            validator(net.model, run.vae, run.encoder, run.downscale, net.use_cva, run.step, accelerator.trackers)
    accelerator.wait_for_everyone()


def loop(run: Run) -> dict:
    """Optimisation steps until train.max_steps, with metrics and checkpoints; returns a summary."""
    config, train_cfg, accelerator = run.config, run.config["train"], run.accelerator
    metrics = MetricsWriter(run)
    validator = Validator.from_config(config)
    last_loss, written = math.nan, []
    if train_cfg["save_initial"] and run.step == 0:
        written.append(save_checkpoint(accelerator, run.net, config, 0, run.ema))
    accumulated = 0.0
    while run.step < train_cfg["max_steps"]:
        for batch in run.loader:
            with accelerator.accumulate(run.net):
                loss, _ = training_loss(run.net, batch, run.vae, run.encoder, run.noise_scheduler, train_cfg,
                                        run.downscale, config["stage"], run.model_dtype)
                accelerator.backward(loss)
                if accelerator.sync_gradients and train_cfg["max_grad_norm"]:
                    accelerator.clip_grad_norm_(run.trainable, train_cfg["max_grad_norm"])
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            accumulated += accelerator.gather(loss.detach().reshape(1)).mean().item()
            if not accelerator.sync_gradients:
                continue
            run.step += 1
            if run.ema is not None:
                run.ema.step(run.trainable)
            last_loss = accumulated / train_cfg["gradient_accumulation_steps"]
            accumulated = 0.0
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss became {last_loss} at step {run.step}")
            metrics.write(run.step, last_loss)
            if run.step % train_cfg["checkpointing_steps"] == 0 or run.step == train_cfg["max_steps"]:
                written.append(save_checkpoint(accelerator, run.net, config, run.step, run.ema))
            validate(run, validator)
            if run.step >= train_cfg["max_steps"]:
                break
    metrics.close()
    pack = write_stage_pack(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"step": run.step, "loss": last_loss, "checkpoints": [str(p) for p in written],
            "pack": str(pack) if pack else None, "seconds": time.time() - metrics.started}


def train(config: dict) -> dict:
    return loop(setup(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="trainer/configs/stage1.yaml, stage2.yaml or end2end.yaml")
    parser.add_argument("--global-batch", type=int, metavar="N",
                        help="samples per optimisation step over all GPUs (= train.global_batch); the paper's: 16 "
                             "(stage1), 32 (stage2), 8 (end2end); fewer GPUs accumulate gradients to reach it")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=1000 data.batch_size=4")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *([f"train.global_batch={args.global_batch}"] if args.global_batch else [])]
    try:
        summary = train(load_config(args.config, overrides))
    except (ConfigError, DataError, SetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The learning proof: the real trainer teaches a small IMAGPose to carry appearance from the sources to a target.

    python benchmarks/learning_proof.py [--preset full|ci] [--out out/learning-proof] [--key value ...]

1. a synthetic people data set (trainer.synthetic): thousands of identities with random colours, so colours
   cannot be memorised, only copied from the source cells;
2. a small AutoencoderKL fitted on it (trainer.fit_vae; 8x, 4 channels, the SD1.5 latent layout);
3. a small IMAGPose (the test-model family) trained through the trainer's entry point, `trainer.train.main`:
   stage 1, then end-to-end (CVA on);
4. held-out identities in held-out poses, generated with the pure sampler (imagpose.sampling, proven equal to
   ComfyUI's sampling in tests/test_sampling.py) on the library's conditioning, 1 source -> 1 target, and
   measured in the target cell against the ground-truth figure: mean absolute error and SSIM of the cell, and
   the figure's colour error (mean |generated - identity colour| over the figure's parts), for
   the trained model, (a) the untrained model (checkpoint-0), (b) the trained model with blank (white)
   source photos (their poses kept) and (c) the swap: the same target pose with another identity's source,
   compared with both identities' ground truth. Also the VAE's ceiling: decode(encode(ground truth)).
Prints a table and wall time per stage, writes OUT/results.json and OUT/sheet.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from imagpose import grid  # noqa: E402
from imagpose.model import LATENT_SCALE  # noqa: E402
from trainer import generate as generation  # noqa: E402
from trainer import synthetic  # noqa: E402

PRESETS = {
    # measured on one core of the 2-core machine: 34 min of training, 32 min of VAE fit, 2 min of evaluation
    "full": {"identities": 2000, "poses": 4, "vae_steps": 1200, "stage1_steps": 2000, "second_stage": "end2end",
             "second_steps": 500, "batch": 4, "lr": 5e-4, "second_lr": 5e-4, "cases": 24, "sample_steps": 20,
             "cfg": 2.0, "checkpoint_every": 500},
    # the CI version (tests/e2e/test_e2e_learning_proof.py)
    "ci": {"identities": 1000, "poses": 4, "vae_steps": 600, "stage1_steps": 700, "second_stage": "end2end",
           "second_steps": 100, "batch": 4, "lr": 5e-4, "second_lr": 5e-4, "cases": 12, "sample_steps": 20,
           "cfg": 2.0, "checkpoint_every": 0},
}
CELL = 64
EVAL_SEED = 10_000  # held-out identities and poses come from seeds the training data never uses


def log(message: str) -> None:
    print(f"[learning-proof] {message}", flush=True)


# ---- setup ----------------------------------------------------------------------------------------------

def build_data(root: Path, settings: dict) -> Path:
    groups = root / "data" / "groups.json"
    if not groups.is_file():
        summary = synthetic.write_dataset(root / "data", settings["identities"], settings["poses"], CELL, seed=0)
        log(f"data: {summary['images']} photos of {summary['groups']} identities")
    return groups


def build_vae(root: Path, settings: dict) -> tuple[Path, dict]:
    from trainer import fit_vae

    folder = root / "vae"
    if not (folder / "fit.json").is_file():
        images = fit_vae.load_images(root / "data" / "image", limit=4000)
        vae, report = fit_vae.fit(images, settings["vae_steps"], log_every=max(1, settings["vae_steps"] // 5))
        vae.save_pretrained(folder, safe_serialization=True)
        (folder / "fit.json").write_text(json.dumps(report, indent=2))
    return folder, json.loads((folder / "fit.json").read_text())


def build_models(root: Path) -> dict[str, Path]:
    """The 4-channel base UNet ("SD1.5" of the test-model family) and a small DINOv2, random weights."""
    from diffusers import UNet2DConditionModel

    from imagpose.testing import TINY_UNET, write_tiny_dinov2

    base = root / "models" / "sd15"
    if not (base / "unet" / "config.json").is_file():
        torch.manual_seed(0)
        UNet2DConditionModel(**{**TINY_UNET, "in_channels": 4}).save_pretrained(base / "unet")
    dinov2 = root / "models" / "dinov2"
    if not (dinov2 / "config.json").is_file():
        write_tiny_dinov2(dinov2, seed=0)
    return {"base_unet": base, "image_encoder": dinov2}


def stage_config(root: Path, stage: str, steps: int, learning_rate: float, settings: dict, models: dict, vae: Path,
                 groups: Path, init: Path | None) -> dict:
    from imagpose.testing import TINY_PATCH, TINY_POSE_GUIDER
    from trainer.synthetic import POSE_TEMPLATE

    model = {"vae": str(vae), "image_encoder": str(models["image_encoder"])}
    if stage == "stage1":
        model.update(base_unet=str(models["base_unet"]), pose_guider_channels=TINY_POSE_GUIDER["block_out_channels"],
                     patch_size=TINY_PATCH["patch_size"])
    else:
        model["init_checkpoint"] = str(init)
    return {
        "stage": stage, "output_dir": str(root / "runs" / stage), "seed": 0, "model": model,
        "data": {"groups": str(groups), "pose_template": POSE_TEMPLATE, "cell_height": CELL, "cell_width": CELL,
                 "batch_size": settings["batch"], "num_workers": 0},
        "train": {"max_steps": steps, "checkpointing_steps": settings["checkpoint_every"] or steps,
                  "checkpoints_keep": None, "save_initial": True, "mixed_precision": "no", "gradient_checkpointing": False, "learning_rate": learning_rate,
                  "log_every": max(1, steps // 10), "resume": "latest",
                  "report_to": None, "progress_bar": False},
    }


def train_stage(root: Path, stage: str, steps: int, learning_rate: float, settings: dict, models: dict, vae: Path,
                groups: Path, init: Path | None = None) -> dict:
    """One stage through the trainer's command-line entry point; returns steps, seconds, losses, checkpoints."""
    import yaml

    from trainer import train

    config = stage_config(root, stage, steps, learning_rate, settings, models, vae, groups, init)
    path = root / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = Path(config["output_dir"])
    final = output / f"checkpoint-{config['train']['max_steps']}"
    if not final.is_dir():  # an interrupted run goes on from its last checkpoint (train.resume: latest)
        code = train.main(["--config", str(path)])
        if code != 0:
            raise RuntimeError(f"trainer {stage} exited with {code}")
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    tenth = max(1, len(losses) // 10)
    training = training_seconds(records)
    return {"stage": stage, "steps": len(losses), "seconds": round(training, 1),
            "seconds_per_step": round(training / max(1, len(losses)), 3),
            "loss_first_tenth": float(np.mean(losses[:tenth])), "loss_last_tenth": float(np.mean(losses[-tenth:])),
            "initial": str(output / "checkpoint-0"), "final": str(final)}


def training_seconds(records: list[dict]) -> float:
    """Optimisation time of a stage from its metrics (the clock restarts when a run resumes)."""
    total, last = 0.0, 0.0
    for record in records:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last


# ---- evaluation -----------------------------------------------------------------------------------------

def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def eval_cases(count: int, seed: int = EVAL_SEED) -> list[dict]:
    """Held-out cases: identity A seen in a source pose, asked in a target pose; identity B for the swap."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        a, b = synthetic.random_identity(rng), synthetic.random_identity(rng)
        source_a, source_b, target = (synthetic.random_pose(rng, CELL, CELL) for _ in range(3))
        cases.append({
            "identities": (a, b),
            "source": to_tensor(synthetic.draw_figure(source_a, a)),
            "source_pose": to_tensor(synthetic.render_pose(source_a)),
            "swap_source": to_tensor(synthetic.draw_figure(source_b, b)),
            "swap_source_pose": to_tensor(synthetic.render_pose(source_b)),
            "target_pose": to_tensor(synthetic.render_pose(target)),
            "truth": to_tensor(synthetic.draw_figure(target, a)),
            "swap_truth": to_tensor(synthetic.draw_figure(target, b)),
            "labels": synthetic.part_labels(target),
        })
    return cases


def generate(model, vae, encoder, sources, source_poses, target_poses, settings: dict) -> torch.Tensor:
    """Target cells (N, 3, H, W) in [0, 1], one per (source, source pose, target pose), with the conditioning and
    sampling the trainer's evaluation uses (trainer.generate: the nodes' library functions, imagpose.sampling)."""
    from trainer.models import vae_downscale

    sampling = generation.Sampling(steps=settings["sample_steps"], cfg=settings["cfg"], seed=0, cell_height=CELL,
                                   cell_width=CELL, fit="pad")
    layout = grid.make_layout(1, 1, CELL, CELL)
    conditions = [generation.grid_conditioning(model, vae, encoder, layout, s[None], sp[None], tp[None], sampling,
                                               vae_downscale(vae))
                  for s, sp, tp in zip(sources, source_poses, target_poses)]
    return generation.target_cells(generation.sample_grids(model, vae, conditions, sampling), layout)[:, 0]


@torch.no_grad()
def reconstruct_in_grid(vae, sources, truths) -> torch.Tensor:
    """The VAE ceiling: the ground truth in the target cell of the grid, encoded and decoded (posterior mean)."""
    from trainer.loss import vae_latents

    layout = grid.make_layout(1, 1, CELL, CELL)
    cells = [truths if s is None else sources for s in layout.cell_sources]
    latent = vae_latents(vae, grid.pack_grid(cells), sample=False)
    images = ((vae.decode(latent / LATENT_SCALE).sample + 1) / 2).clamp(0, 1)
    return grid.split_grid(images)[layout.target_cells[0]]


def colour_error(image: torch.Tensor, labels: np.ndarray, identity: synthetic.Identity) -> float:
    """Mean |image - the identity's colour of each part| over the figure's inner pixels, in [0, 1]."""
    mask = synthetic.inner_mask(labels)
    palette = identity.palette()
    expected = palette[np.clip(labels - 1, 0, None)]
    pixels = image.permute(1, 2, 0).numpy()
    return float(np.abs(pixels[mask] - expected[mask]).mean())


def cell_metrics(images: torch.Tensor, truths: torch.Tensor) -> tuple[float, float]:
    """Mean absolute error and mean SSIM (scikit-image, colour, data range 1) of cells in [0, 1]."""
    from skimage.metrics import structural_similarity

    mae = float((images - truths).abs().mean())
    ssim = float(np.mean([structural_similarity(t.permute(1, 2, 0).numpy(), i.permute(1, 2, 0).numpy(),
                                                channel_axis=2, data_range=1.0) for i, t in zip(images, truths)]))
    return mae, ssim


def evaluate(checkpoints: dict, vae_dir: Path, encoder_dir: Path, settings: dict) -> tuple[dict, dict]:
    """Metrics per condition and the images for the sheet."""
    from trainer.models import load_image_encoder, load_vae, trained_model

    vae, encoder = load_vae(vae_dir), load_image_encoder(encoder_dir)
    cases = eval_cases(settings["cases"])
    stack = {k: torch.stack([c[k] for c in cases]) for k in ("source", "source_pose", "swap_source",
                                                             "swap_source_pose", "target_pose", "truth", "swap_truth")}
    blank = torch.ones_like(stack["source"])
    models = {name: trained_model(path).eval() for name, path in checkpoints.items()}
    images = {
        "trained": generate(models["trained"], vae, encoder, stack["source"], stack["source_pose"], stack["target_pose"], settings),
        "untrained": generate(models["untrained"], vae, encoder, stack["source"], stack["source_pose"], stack["target_pose"], settings),
        "blanked": generate(models["trained"], vae, encoder, blank, stack["source_pose"], stack["target_pose"], settings),
        "swap": generate(models["trained"], vae, encoder, stack["swap_source"], stack["swap_source_pose"],
                         stack["target_pose"], settings),
        "vae_ceiling": reconstruct_in_grid(vae, stack["source"], stack["truth"]),
    }
    results = {}
    for name, generated in images.items():
        truth = stack["swap_truth"] if name == "swap" else stack["truth"]
        mae, ssim = cell_metrics(generated, truth)
        own = [colour_error(g, c["labels"], c["identities"][1 if name == "swap" else 0]) for g, c in zip(generated, cases)]
        results[name] = {"mae": mae, "ssim": ssim, "colour_error": float(np.mean(own))}
    swap = results["swap"]
    other_mae, other_ssim = cell_metrics(images["swap"], stack["truth"])
    swap.update({"mae_vs_original_truth": other_mae, "ssim_vs_original_truth": other_ssim,
                 "colour_error_vs_original": float(np.mean([colour_error(g, c["labels"], c["identities"][0])
                                                            for g, c in zip(images["swap"], cases)]))})
    return results, {**images, **stack}


# ---- report ---------------------------------------------------------------------------------------------

def table(results: dict) -> str:
    rows = [("condition", "MAE", "SSIM", "colour err"), ("-" * 34, "-" * 6, "-" * 6, "-" * 10)]
    names = {"trained": "trained", "untrained": "(a) untrained (checkpoint-0)", "blanked": "(b) trained, blank sources",
             "swap": "(c) swap: vs the new source's truth", "vae_ceiling": "VAE ceiling decode(encode(truth))"}
    for key, label in names.items():
        r = results[key]
        rows.append((label, f"{r['mae']:.4f}", f"{r['ssim']:.4f}", f"{r['colour_error']:.4f}"))
    swap = results["swap"]
    rows.append(("    swap vs the original truth", f"{swap['mae_vs_original_truth']:.4f}",
                 f"{swap['ssim_vs_original_truth']:.4f}", f"{swap['colour_error_vs_original']:.4f}"))
    return "\n".join(f"{a:<36} {b:>7} {c:>7} {d:>10}" for a, b, c, d in rows)


def write_sheet(path: Path, images: dict, rows: int = 8, scale: int = 2) -> None:
    """Rows of: source | target pose | generated | truth | untrained | blank sources | swap source | swap | swap truth."""
    from PIL import Image, ImageDraw

    columns = [("source", "source"), ("target_pose", "target pose"), ("trained", "generated"), ("truth", "truth"),
               ("untrained", "untrained"), ("blanked", "blank src"), ("swap_source", "swap src"),
               ("swap", "swap gen"), ("swap_truth", "swap truth")]
    rows = min(rows, images["truth"].shape[0])
    header = 14
    sheet = Image.new("RGB", (len(columns) * CELL * scale, header + rows * CELL * scale), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (key, label) in enumerate(columns):
        draw.text((j * CELL * scale + 3, 1), label, fill="black")
        for i in range(rows):
            pixels = (images[key][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels).resize((CELL * scale, CELL * scale), Image.NEAREST)
            sheet.paste(tile, (j * CELL * scale, header + i * CELL * scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def run(out: Path, settings: dict) -> dict:
    """The whole proof; returns the results (also written to OUT/results.json)."""
    from trainer.testing import one_intraop_thread

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    with one_intraop_thread():
        started = time.time()
        groups = build_data(out, settings)
        timings["data"] = round(time.time() - started, 1)
        started = time.time()
        vae_dir, vae_report = build_vae(out, settings)
        timings["vae"] = round(time.time() - started, 1)
        log(f"VAE: {vae_report['steps']} steps, latent std {vae_report['latent_std']:.3f}")
        models = build_models(out)
        stages = [train_stage(out, "stage1", settings["stage1_steps"], settings["lr"], settings, models, vae_dir,
                              groups)]
        if settings["second_steps"]:
            stages.append(train_stage(out, settings["second_stage"], settings["second_steps"], settings["second_lr"],
                                      settings, models, vae_dir, groups, init=Path(stages[0]["final"])))
        for stage in stages:
            log(f"{stage['stage']}: {stage['steps']} steps in {stage['seconds']} s, loss "
                f"{stage['loss_first_tenth']:.4f} -> {stage['loss_last_tenth']:.4f}")
        started = time.time()
        results, images = evaluate({"trained": stages[-1]["final"], "untrained": stages[0]["initial"]}, vae_dir,
                                   models["image_encoder"], settings)
        timings["evaluation"] = round(time.time() - started, 1)
    write_sheet(out / "sheet.png", images)
    report = {"settings": settings, "results": results, "stages": stages, "timings": timings, "vae": vae_report}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    for stage in stages:
        print(f"{stage['stage']}: {stage['steps']} steps, {stage['seconds']} s of training "
              f"({stage['seconds'] / max(1, stage['steps']):.2f} s/step), loss {stage['loss_first_tenth']:.4f} -> "
              f"{stage['loss_last_tenth']:.4f}")
    print(f"data {timings['data']} s, VAE fit {vae_report['seconds']} s ({vae_report['steps']} steps), "
          f"evaluation {timings['evaluation']} s; sheet: {out / 'sheet.png'}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "learning-proof")
    for key, value in PRESETS["full"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    settings = dict(PRESETS[args.preset])
    settings.update({k: v for k, v in vars(args).items() if k in settings and v is not None})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    run(args.out, settings)
    print(f"total wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation like the paper: generate DeepFashion's test pairs, then SSIM, LPIPS and FID as the PCDMs script.

    python -m trainer.evaluate --checkpoint runs/end2end/checkpoint-50000 --vae sd-vae-ft-mse \
        --image-encoder dinov2-base --prepared data/deepfashion --out runs/eval-50000
    accelerate launch --multi_gpu --num_processes N -m trainer.evaluate ...     # pairs and metric images sharded

Modes (both by default):
- `1to1`: one source -> one target per pair. `--single-target repeat-pose` (default, the paper's text and the
  evaluation protocol): the source in the first cell, the target pose in all three other cells, the first of them
  kept; `repeat-source`: the source three times and the target last (the authors' test.py, the nodes' 1 -> 1 grid).
- `1to3`: the pairs of one source are generated three targets at a time in one grid (a last grid of 1-2 targets
  uses the nodes' layout for that count); every pair is generated exactly once.

Generation uses the nodes' conditioning and sampling (`trainer.generate`: DDIM trailing, 20 steps, cfg 2.0, one seed
for every grid). Each image is written under a temporary name and renamed when complete, so a rerun skips what is
done; OUT/settings.json refuses a rerun with other generation settings. Metrics (`trainer.metrics`) are computed at
each metric size (default 256x176 and 512x352, H x W) for every mode; FID's real set is every training photo of the
prepared split. OUT/metrics.json (settings, versions and results) is written last, atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagpose.grid import make_layout
from imagpose.image_encoder import AUTHORS_POSITIONS

from . import generate, metrics
from .processes import process_state
from .data import DataError, PoseRule, load_rgb
from .models import (SetupError, check_compatible, load_image_encoder, load_vae, trained_model, trained_weights,
                     vae_downscale)
from .prepare import FORMAT, MANIFEST

MODES = ("1to1", "1to3")
SINGLE_TARGET = ("repeat-pose", "repeat-source")
REMAINDER = ("keep", "drop")
LPIPS_BATCH = 64  # the PCDMs script's batch sizes (remainders dropped with --remainder drop)
FID_BATCH = 128
SHEET_ROWS = 8
SHEET_HEIGHT = 256


class EvaluationError(ValueError):
    """Unusable input for evaluation; the message names the file."""


@dataclass(frozen=True)
class Job:
    """One grid: a source photo and up to three target photos (whose poses are used and whose files are the truth)."""

    mode: str
    source: str  # paths relative to the prepared folder
    targets: tuple[str, ...]
    replicate: bool = False  # the paper's 1 -> 1: the single target pose in all three target cells

    def outputs(self, out: Path) -> list[Path]:
        return [out / self.mode / "images" / f"{Path(self.source).stem}_2_{Path(t).stem}.png" for t in self.targets]

    def layout(self, cell_height: int, cell_width: int):
        return make_layout(1, 3 if self.replicate else len(self.targets), cell_height, cell_width)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run python -m trainer.prepare first (its last step writes it; "
                              "without it the preparation did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise EvaluationError(f"{path} is not a trainer.prepare manifest")
    if not manifest["test_pairs"]:
        raise EvaluationError(f"{path} holds no test pairs")
    return manifest


def make_jobs(pairs: list[list[str]], modes: list[str], single_target: str) -> list[Job]:
    jobs = []
    if "1to1" in modes:
        jobs += [Job("1to1", s, (t,), replicate=single_target == "repeat-pose") for s, t in pairs]
    if "1to3" in modes:
        by_source: OrderedDict[str, list[str]] = OrderedDict()
        for source, target in pairs:
            by_source.setdefault(source, []).append(target)
        for source, targets in by_source.items():
            jobs += [Job("1to3", source, tuple(targets[i : i + 3])) for i in range(0, len(targets), 3)]
    return jobs


def load_photo_and_pose(prepared: Path, relative: str, rule: PoseRule, skip_bad: bool):
    """(photo, pose) as (1, 3, H, W) tensors, or None when skipped; a pose of another size is an error naming it."""
    photo_path = prepared / relative
    pose_path = rule(photo_path)
    try:
        photo, pose = load_rgb(photo_path), load_rgb(pose_path) if pose_path.is_file() else None
        if pose is None:
            raise DataError(f"pose image {pose_path} not found for {photo_path} (rerun python -m trainer.prepare)")
        if photo.shape != pose.shape:
            raise DataError(f"pose image {pose_path} is {pose.shape[2]}x{pose.shape[1]} but its photo {photo_path} is "
                            f"{photo.shape[2]}x{photo.shape[1]}: poses must be rendered on the photo's frame")
    except DataError:
        if skip_bad:
            return None
        raise
    return photo[None], pose[None]


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] -> 8-bit PNG, written under a temporary name and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    generate.to_pil(image).save(temp, format="PNG")
    os.replace(temp, path)


def write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(text)
    os.replace(temp, path)


def generation_settings(args, settings: generate.Sampling) -> dict:
    return {"checkpoint": str(Path(args.checkpoint).resolve()), "vae": str(Path(args.vae).resolve()),
            "image_encoder": str(Path(args.image_encoder).resolve()), "single_target": args.single_target,
            "dtype": args.dtype, **settings.describe()}


def check_settings(out: Path, wanted: dict) -> None:
    path = out / "settings.json"
    if path.is_file():
        had = json.loads(path.read_text())
        changed = {k: (had.get(k), v) for k, v in wanted.items() if had.get(k) != v}
        if changed:
            raise EvaluationError(f"{out} holds images generated with other settings ({changed}); use another --out, "
                                  "or delete it to start over")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(wanted, indent=1))


class Generator:
    """Model, VAE and image encoder on this process's device; generates and writes the images of grid jobs."""

    def __init__(self, args, settings: generate.Sampling, device):
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        weights = trained_weights(args.checkpoint)
        self.model = trained_model(weights).eval().requires_grad_(False).to(device, dtype)
        self.vae = load_vae(args.vae).to(device)
        # DINOv2 as in training and in the nodes: the position resampling the checkpoint records (else the authors')
        self.encoder = load_image_encoder(args.image_encoder,
                                          weights.image_encoder_positions or AUTHORS_POSITIONS).to(device)
        check_compatible(self.model, self.vae, self.encoder)
        self.downscale = vae_downscale(self.vae)
        self.settings = settings

    def run(self, jobs: list[Job], prepared: Path, out: Path, rule: PoseRule, skip_bad: bool) -> list[Job]:
        """Generate a batch of jobs with the same layout, write the images not there yet; returns the jobs skipped
        for bad input."""
        conditions, kept, skipped = [], [], []
        settings = self.settings
        for job in jobs:
            loaded = [load_photo_and_pose(prepared, p, rule, skip_bad) for p in (job.source, *job.targets)]
            if any(x is None for x in loaded):
                skipped.append(job)
                continue
            (source, source_pose), targets = loaded[0], loaded[1:]
            target_poses = torch.cat([pose for _, pose in targets])
            if job.replicate:
                target_poses = target_poses.expand(3, -1, -1, -1)
            layout = job.layout(settings.cell_height, settings.cell_width)
            conditions.append(generate.grid_conditioning(self.model, self.vae, self.encoder, layout, source,
                                                         source_pose, target_poses, settings, self.downscale))
            kept.append((job, layout, [photo.shape[-2:] for photo, _ in targets]))
        if not conditions:
            return skipped
        grids = generate.sample_grids(self.model, self.vae, conditions, settings)
        for (job, layout, sizes), grid_image in zip(kept, grids):
            cells = generate.target_cells(grid_image[None], layout)[0]
            for cell, size, path in zip(cells, sizes, job.outputs(out)):  # replicate: the first target cell
                if not path.is_file():  # a rerun regenerates a whole batch but keeps the images it had
                    save_png(generate.uncrop(cell, tuple(size), settings), path)
        return skipped


def plan_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs of one layout grouped into sampling batches in a fixed order. Processes take whole batches, so an image
    comes out of the same batch (bit for bit the same) whatever the number of processes."""
    by_layout: dict[tuple, list[Job]] = {}
    for job in jobs:
        by_layout.setdefault((job.mode, len(job.targets), job.replicate), []).append(job)
    return [group[i : i + batch_size] for group in by_layout.values() for i in range(0, len(group), batch_size)]


def generate_all(args, jobs: list[Job], prepared: Path, rule: PoseRule, state) -> int:
    """This process's share of the unfinished batches; returns how many grids were skipped for bad input."""
    from tqdm.auto import tqdm

    batches = plan_batches(jobs, args.batch_size)
    mine = [batch for batch in batches[state.process_index :: state.num_processes]
            if not all(p.is_file() for job in batch for p in job.outputs(args.out))]
    if state.is_main_process:
        print(f"[evaluate] {len(jobs)} grids in {len(batches)} batches, {state.num_processes} process(es); this one "
              f"generates {sum(len(b) for b in mine)} grids (finished batches are skipped)", flush=True)
    if not mine:
        return 0
    generator = Generator(args, sampling_settings(args), state.device)
    skipped = 0
    for batch in tqdm(mine, desc="generating", unit="batch", disable=not state.is_main_process):
        skipped += len(generator.run(batch, prepared, args.out, rule, args.skip_bad))
    return skipped


def sampling_settings(args) -> generate.Sampling:
    height, width = args.cell
    return generate.Sampling(steps=args.steps, cfg=args.cfg, seed=args.seed, cell_height=height, cell_width=width,
                             fit=args.fit)


def used(count: int, batch: int, remainder: str) -> int:
    """How many items the PCDMs script scores: whole batches only (a batch larger than the set shrinks to it)."""
    if remainder == "keep" or count == 0:
        return count
    batch = min(batch, count)
    return count // batch * batch


def fid_stats(paths: list[Path], size, inception, state, desc: str) -> metrics.FeatureStats:
    """Inception statistics of images, each process its share, summed over processes."""
    from accelerate.utils import reduce
    from tqdm.auto import tqdm

    stats = metrics.FeatureStats()
    shard = paths[state.process_index :: state.num_processes]
    for start in tqdm(range(0, len(shard), 32), desc=desc, unit="batch", disable=not state.is_main_process):
        images = [metrics.load_image(p, size) for p in shard[start : start + 32]]
        stats.add(inception(metrics.to_batch(images, state.device)))
    flat = stats.tensors().to(state.device)
    if state.num_processes > 1:
        flat = reduce(flat, reduction="sum")
    return metrics.FeatureStats.from_tensors(flat)


def pair_metrics(pairs: list[tuple[Path, Path]], size, lpips_model, state) -> list[tuple[str, float, float, float]]:
    """(generated file name, SSIM, LPIPS pcdms feed, LPIPS standard feed) per pair, gathered from every process."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    rows = []
    shard = pairs[state.process_index :: state.num_processes]
    for start in tqdm(range(0, len(shard), 16), desc=f"SSIM/LPIPS {size[0]}x{size[1]}", unit="batch",
                      disable=not state.is_main_process):
        chunk = shard[start : start + 16]
        generated = [metrics.load_image(g, size) for g, _ in chunk]
        truth = [metrics.load_image(t, size) for _, t in chunk]
        pcdms = lpips_model(generated, truth, "pcdms")
        standard = lpips_model(generated, truth, "standard")
        for (g, _), a, b, p, s in zip(chunk, truth, generated, pcdms, standard):
            rows.append((g.name, metrics.ssim(a, b), p, s))
    if state.num_processes > 1:
        rows = gather_object(rows)
    return sorted(rows)


def compute_metrics(args, jobs: list[Job], manifest: dict, state) -> dict:
    """Every metric at every size for every mode (images of all processes), written by the main process."""
    prepared = args.prepared
    inception = metrics.InceptionFeatures(args.metric_weights, state.device)
    lpips_model = metrics.LPIPS(args.metric_weights, state.device)
    real = sorted(prepared / p for p in manifest["train_images"])
    results: dict = {}
    for size in args.sizes:
        label = f"{size[0]}x{size[1]}"
        real_used = real[: used(len(real), FID_BATCH, args.remainder)]
        real_stats = fid_stats(real_used, size, inception, state, f"FID real set {label}")
        real_mean, real_cov = real_stats.mean_cov()
        real_root = metrics.sqrt_psd(real_cov) if state.is_main_process else None  # shared by the modes
        for mode in args.modes:
            pairs = sorted((out_path, prepared / target) for job in jobs if job.mode == mode
                           for out_path, target in zip(job.outputs(args.out), job.targets) if out_path.is_file())
            if not pairs:
                raise EvaluationError(f"no generated {mode} images in {args.out / mode / 'images'}")
            rows = pair_metrics(pairs, size, lpips_model, state)
            generated = [g for g, _ in pairs][: used(len(pairs), FID_BATCH, args.remainder)]
            gen_stats = fid_stats(generated, size, inception, state, f"FID {mode} {label}")
            lpips_rows = rows[: used(len(rows), LPIPS_BATCH, args.remainder)]
            entry = {
                "ssim": float(np.mean([r[1] for r in rows])),
                "lpips_pcdms": float(np.mean([r[2] for r in lpips_rows])),
                "lpips_standard": float(np.mean([r[3] for r in lpips_rows])),
                "fid": metrics.frechet_distance(real_mean, real_cov, *gen_stats.mean_cov(), root1=real_root)
                if state.is_main_process else None,  # only the main process reports
                "counted": {"ssim_pairs": len(rows), "lpips_pairs": len(lpips_rows), "fid_generated": gen_stats.count,
                            "fid_real": real_stats.count},
            }
            results.setdefault(mode, {})[label] = entry
            if state.is_main_process:
                table = io.StringIO()
                writer = csv.writer(table)
                writer.writerow(["generated", "ssim", "lpips_pcdms", "lpips_standard"])
                writer.writerows(rows)
                write_atomic(args.out / mode / f"pairs-{label}.csv", table.getvalue())
    return results


def write_sheet(args, jobs: list[Job], mode: str, rule: PoseRule) -> Path | None:
    """Side by side for the first pairs of a mode: source | target pose | generated | ground truth."""
    rows = []
    for job in (j for j in jobs if j.mode == mode):
        for target, output in zip(job.targets, job.outputs(args.out)):
            if output.is_file() and len(rows) < SHEET_ROWS:
                paths = [args.prepared / job.source, rule(args.prepared / target), output, args.prepared / target]
                rows.append([Image.open(p).convert("RGB") for p in paths])
    if not rows:
        return None
    sheet = generate.compose_sheet(rows, SHEET_HEIGHT)
    path = args.out / mode / "sheet.png"
    temp = path.with_name(f".{path.name}.partial")
    sheet.save(temp, format="PNG")
    os.replace(temp, path)
    return path


def versions() -> dict:
    import importlib.metadata as meta

    found = {}
    for package in ("torch", "torchvision", "diffusers", "transformers", "scikit-image", "lpips", "opencv-python-headless",
                    "scipy", "accelerate"):
        try:
            found[package] = meta.version(package)
        except meta.PackageNotFoundError:
            continue
    return found


def evaluate(args) -> dict | None:
    state = process_state()
    started = time.time()
    manifest = read_manifest(args.prepared)
    rule = PoseRule(template=manifest["pose_template"])
    pairs = manifest["test_pairs"][: args.limit] if args.limit else manifest["test_pairs"]
    jobs = make_jobs(pairs, args.modes, args.single_target)
    # the backbones must be there before hours of generation
    for name in (metrics.INCEPTION_FILE, metrics.ALEXNET_FILE):
        metrics.weights_file(args.metric_weights, name)
    wanted = generation_settings(args, sampling_settings(args))
    if state.is_main_process:
        check_settings(args.out, wanted)
        (args.out / "metrics.json").unlink(missing_ok=True)  # stale until this run completes
    state.wait_for_everyone()
    skipped = generate_all(args, jobs, args.prepared, rule, state)
    state.wait_for_everyone()
    results = compute_metrics(args, jobs, manifest, state)
    if not state.is_main_process:
        return None
    sheets = {mode: str(write_sheet(args, jobs, mode, rule)) for mode in args.modes}
    summary = {
        "settings": {**wanted, "modes": args.modes, "metric_sizes": [f"{h}x{w}" for h, w in args.sizes],
                     "remainder": args.remainder, "lpips": {"net": "alex", "version": "0.1",
                                                            "feeds": {"pcdms": "0-1 inputs without normalize (PCDMs)",
                                                                      "standard": "-1..1 inputs"}},
                     "ssim": "skimage structural_similarity, gaussian sigma 1.2, population covariance, per channel, "
                             "data_range = max - min of the generated image, 0-255",
                     "fid": "torchvision Inception-v3 IMAGENET1K_V1 pool features, bilinear 299, GFLA/PCDMs normalisation, "
                            "real set = the prepared training photos",
                     "resize": "OpenCV bicubic on float32, no clipping",
                     "weights": {"inception": str(metrics.weights_file(args.metric_weights, metrics.INCEPTION_FILE)),
                                 "alexnet": str(metrics.weights_file(args.metric_weights, metrics.ALEXNET_FILE))},
                     "pairs": len(pairs), "prepared": str(args.prepared), "processes": state.num_processes},
        "versions": versions(),
        "results": results,
        "grids": {mode: sum(1 for j in jobs if j.mode == mode) for mode in args.modes},
        "skipped_grids": skipped,
        "sheets": sheets,
        "seconds": round(time.time() - started, 1),
    }
    write_atomic(args.out / "metrics.json", json.dumps(summary, indent=1))
    for mode, sizes in results.items():
        for label, values in sizes.items():
            print(f"[evaluate] {mode} @ {label}: SSIM {values['ssim']:.4f}  LPIPS {values['lpips_pcdms']:.4f} (PCDMs "
                  f"feed) / {values['lpips_standard']:.4f} (-1..1)  FID {values['fid']:.4f}")
    print(f"[evaluate] written: {args.out / 'metrics.json'}")
    return summary


def size_arg(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x176, got {text!r}") from error
    return height, width


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint-N folder, pack .safetensors or authors' files")
    parser.add_argument("--vae", required=True, help="the VAE (sd-vae-ft-mse folder or file, or the SD1.5 single file)")
    parser.add_argument("--image-encoder", required=True, help="DINOv2 folder or .safetensors")
    parser.add_argument("--prepared", type=Path, required=True, help="the output folder of python -m trainer.prepare")
    parser.add_argument("--out", type=Path, required=True, help="where images, sheets and metrics.json go")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--single-target", choices=SINGLE_TARGET, default="repeat-pose",
                        help="1to1 layout: repeat-pose = S,T,T,T with the target pose x3, first kept (paper, protocol); "
                             "repeat-source = S,S,S,T (authors' test.py, the nodes' 1 -> 1 grid)")
    parser.add_argument("--cell", type=size_arg, default=(768, 512), help="cell HEIGHTxWIDTH, multiples of 64 (768x512)")
    parser.add_argument("--fit", choices=("pad", "crop"), default="pad", help="how photos fit the cell (as the nodes)")
    parser.add_argument("--steps", type=int, default=generate.STEPS)
    parser.add_argument("--cfg", type=float, default=generate.CFG)
    parser.add_argument("--seed", type=int, default=generate.SEED)
    parser.add_argument("--batch-size", type=int, default=4, help="grids per sampling call")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="the IMAGPose model's dtype")
    parser.add_argument("--sizes", type=size_arg, nargs="+", default=[(256, 176), (512, 352)],
                        help="metric sizes HEIGHTxWIDTH")
    parser.add_argument("--metric-weights", type=Path, default=metrics.default_weights_dir(),
                        help=f"folder with {metrics.INCEPTION_FILE} and {metrics.ALEXNET_FILE} "
                             "(default: torchvision's download cache)")
    parser.add_argument("--remainder", choices=REMAINDER, default="keep",
                        help="keep: every pair counts; drop: the PCDMs script's whole batches only (LPIPS 64, FID 128)")
    parser.add_argument("--limit", type=int, help="only the first N pairs (a quick look)")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) grids with unreadable or misfit files")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.cell[0] % 64 or args.cell[1] % 64:
        parser.error(f"--cell sides must be multiples of 64 px, got {args.cell[0]}x{args.cell[1]}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate(args)
    except (EvaluationError, metrics.MetricError, DataError, SetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run an IMAGPose workflow (default: 1 source photo -> 3 target poses) on a real ComfyUI server.

    bash scripts/demo.sh                       # provisions first, then runs this
    python scripts/demo.py [--workflow N|NAME] [--source PHOTO] [--out DIR] [--steps N] [--size WxH]

Trained weights are looked for in a models root laid out like ComfyUI's models/ folder:
``$IMAGPOSE_MODELS`` or ``<repo>/models``:

    imagpose/  a pack .safetensors checkpoint, or a folder with the authors' denoising_unet-N.pth etc.
    imagpose/ or clip_vision/  a DINOv2-base folder (config.json + weights)
    vae/       the SD VAE (sd-vae-ft-mse), a .safetensors/.pt/.ckpt/.bin file

If any of these is missing, the demo makes small RANDOM-WEIGHT models and says so: the pipeline then runs end
to end for real, but the pictures are noise-like, not people.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import (  # noqa: E402
    MAIN_WORKFLOW,
    POSE_FILES,
    ComfyServer,
    PromptFailed,
    ensure_test_models,
    image_stats,
    load_workflow,
    make_base_dir,
    nodes_of_type,
    output_images,
    set_run_settings,
    ui_to_api,
    write_inputs,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def find_trained(root: Path) -> dict | None:
    """Names (relative to their model folder) of a checkpoint, image encoder and VAE under ``root``."""
    imagpose, vae_dir = root / "imagpose", root / "vae"
    if not imagpose.is_dir() or not vae_dir.is_dir():
        return None
    checkpoint = None
    files = sorted(p for p in imagpose.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    for p in files:  # a pack file at the top level first
        if p.parent == imagpose and p.suffix == ".safetensors" and "dinov2" not in p.name.lower():
            checkpoint = p.name
            break
    if checkpoint is None:
        unets = [p for p in files if p.name.startswith("denoising_unet")]
        if unets:
            checkpoint = str(unets[0].parent.relative_to(imagpose)) if unets[0].parent != imagpose else unets[0].name
    encoder = None
    for folder in (imagpose, root / "clip_vision"):
        if folder.is_dir():
            configs = sorted(c for c in folder.rglob("config.json") if "dinov2" in c.read_text(errors="ignore").lower())
            if configs:
                encoder = str(configs[0].parent.relative_to(folder))
                break
    vaes = sorted(p.name for p in vae_dir.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not (checkpoint and encoder and vaes):
        return None
    return {"checkpoint": checkpoint, "image_encoder": encoder, "vae": vaes[0]}


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "!" * width)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !")
    print("!" * width + "\n", flush=True)


def contact_sheet(rows: list[list[Path]], out: Path, cell: int = 256) -> None:
    from PIL import Image

    sheet = Image.new("RGB", (cell * max(len(r) for r in rows), cell * len(rows)), (20, 20, 20))
    for y, row in enumerate(rows):
        for x, path in enumerate(row):
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((cell, cell))
                sheet.paste(img, (x * cell + (cell - img.width) // 2, y * cell + (cell - img.height) // 2))
    sheet.save(out)


def find_workflow(name: str) -> Path | None:
    """workflows/<name>.json, or the workflow numbered `name` ("IMAGPose <n> - ...")."""
    folder = REPO / "workflows"
    for path in (folder / name, folder / f"{name}.json"):
        if path.suffix == ".json" and path.is_file():
            return path
    numbered = sorted(folder.glob(f"IMAGPose {name} - *.json"))
    return numbered[0] if len(numbered) == 1 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="1",
                        help="a workflow's number or file name in workflows/ (default: 1, one photo to three poses)")
    parser.add_argument("--source", type=Path, help="your own photo of a person (default: the astronaut photo)")
    parser.add_argument("--models", type=Path,
                        default=Path(os.environ.get("IMAGPOSE_MODELS", REPO / "models")),
                        help="models root with imagpose/ and vae/ (default: $IMAGPOSE_MODELS or <repo>/models)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="output folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 20 with trained weights, as the paper; 10 with random)")
    parser.add_argument("--size", help="cell WxH, multiples of 64 (default 512x768 trained, 128x192 random)")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use a GPU (default: --cpu)")
    args = parser.parse_args()
    started = time.monotonic()

    workflow_path = find_workflow(args.workflow)
    if workflow_path is None:
        names = "\n  ".join(p.stem for p in sorted((REPO / "workflows").glob("*.json")))
        print(f"no workflow {args.workflow!r}; the workflows are:\n  {names}", file=sys.stderr)
        return 2
    trained = find_trained(args.models.resolve()) if args.models.exists() else None
    if trained:
        models_root = args.models.resolve()
        names = trained
        print(f"[demo] trained weights from {models_root}: {json.dumps(names)}")
        steps, size = args.steps or 20, args.size or "512x768"
    else:
        banner([
            "NO TRAINED IMAGPOSE WEIGHTS FOUND",
            f"(looked in {args.models}: needs imagpose/<checkpoint>, a DINOv2 folder, vae/<file>;",
            " set IMAGPOSE_MODELS or pass --models)",
            "RUNNING WITH RANDOM WEIGHTS: the images will be NOISE-LIKE, not people.",
            "This shows the whole pipeline running in ComfyUI, not the quality of IMAGPose.",
        ])
        models_root = ensure_test_models()
        names = {"checkpoint": "tiny-imagpose.safetensors", "image_encoder": "tiny-dinov2",
                 "vae": "tiny-vae.safetensors"}
        steps, size = args.steps or 10, args.size or "128x192"
    width, height = (int(v) for v in size.lower().split("x"))

    out = args.out.resolve()
    base = out / "comfyui"
    if base.exists():
        shutil.rmtree(base / "output", ignore_errors=True)
    make_base_dir(base)
    extra = base / "extra_model_paths.yaml"
    extra.write_text(
        "imagpose_demo:\n"
        f"  base_path: {models_root}\n"
        "  imagpose: imagpose/\n  vae: vae/\n  clip_vision: clip_vision/\n"
    )
    inputs = write_inputs(base / "input")
    if args.source:
        from PIL import Image

        Image.open(args.source).convert("RGB").save(base / "input" / "imagpose_source.png")

    print(f"[demo] starting ComfyUI (base directory {base}) ...", flush=True)
    with ComfyServer(base, extra_args=["--extra-model-paths-config", str(extra)], cpu=not args.gpu) as server:
        print(f"[demo] ComfyUI answered after {server.startup_seconds:.1f} s at {server.client.base_url}")
        info = server.client.object_info()
        if "IMAGPoseModelLoader" not in info:
            print("[demo] the IMAGPose nodes did not load:\n" + server.log_tail(), file=sys.stderr)
            return 1
        prompt = set_run_settings(ui_to_api(load_workflow(workflow_path), info), width=width, height=height,
                                  steps=steps, prefix="demo", **names)
        print(f"[demo] running {workflow_path.name}: cell {width}x{height}, {steps} steps ...", flush=True)
        t0 = time.monotonic()
        try:
            history = server.client.run(prompt, timeout=6 * 3600)
        except PromptFailed as error:
            print(f"[demo] FAILED: {error}\n{server.log_tail()}", file=sys.stderr)
            return 1
        run_seconds = time.monotonic() - t0
        (save_id,) = nodes_of_type(prompt, "SaveImage")
        refs = output_images(history, save_id)
        results = []
        for i, ref in enumerate(refs, 1):
            dst = out / f"target_{i}.png"
            shutil.copyfile(server.output_path(ref), dst)
            results.append(dst)
        (out / "comfyui-log.txt").write_text(server.log_text())

    poses = [inputs[name] for name in sorted(POSE_FILES)][: len(results)]
    source = base / "input" / "imagpose_source.png"
    if workflow_path == MAIN_WORKFLOW:
        contact_sheet([[source, *poses], [source, *results]], out / "summary.png")
    else:
        contact_sheet([results], out / "summary.png")
    print(f"[demo] generated {len(results)} image(s) in {run_seconds:.1f} s (total {time.monotonic() - started:.1f} s):")
    for path in results:
        stats = image_stats(path)
        print(f"         {path}  ({stats['width']}x{stats['height']})")
    print(f"[demo] overview (top: source + target poses, bottom: source + results): {out / 'summary.png'}")
    print(f"[demo] ComfyUI log: {out / 'comfyui-log.txt'}")
    if not trained:
        print("[demo] REMINDER: random weights -> noise-like images. Put trained weights in "
              f"{args.models} (or set IMAGPOSE_MODELS) for real results.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed and memory of one IMAGPose denoising step: ComfyUI path (pack nodes + stock sampler) vs the plain model.

    python benchmarks/bench_sampling.py [--size tiny|sd15] [--cell 64] [--steps 3] [--profile-first FILE]

Prints seconds per step for both paths, the first-sample overhead (the first sampling of a freshly loaded
model minus a later one with the same steps; for the plain model the first call minus a later one) and the
process's peak resident memory. The checkpoint is dropped from the page cache before loading, so it is read from
disk as a user's checkpoint is. Random weights; CPU unless ComfyUI finds a GPU. `sd15` builds SD1.5-size
weights (about 1.3 B parameters with CVA; ~12 GB RAM). `--profile-first` writes cProfile statistics of the
first sampling (read them with `python -m pstats FILE`).
"""
import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--cell", type=int, default=64, help="cell side in pixels (multiple of 64)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile-first", type=Path, help="write cProfile statistics of the first sampling here")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="ComfyUI's --use-pytorch-cross-attention (on CPU it otherwise picks sub-quadratic attention)")
    args = parser.parse_args()
    if args.pytorch_attention:
        from harness.env import prepare_inprocess_comfyui

        prepare_inprocess_comfyui()
        import comfy.cli_args

        comfy.cli_args.args.use_pytorch_cross_attention = True

    from imagpose import checkpoints, testing

    root = Path(tempfile.mkdtemp(prefix="imagpose-bench-"))
    paths = testing.make_models(root)
    if args.size == "sd15":
        config = {**testing.TINY_UNET, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                  "cross_attention_dim": 64}
        torch.manual_seed(0)
        from imagpose.model import IMAGPoseModel
        from imagpose.patch_embed import PatchEmbedding
        from imagpose.pose_guider import PoseGuider
        from imagpose.unet import IMAGPoseUNet

        model = IMAGPoseModel(IMAGPoseUNet(**config), PoseGuider(320), PatchEmbedding(**testing.TINY_PATCH))
        checkpoints.save_pack(model, root / "imagpose" / "tiny-imagpose.safetensors")
        del model
    checkpoint = root / "imagpose" / "tiny-imagpose.safetensors"
    with open(checkpoint, "r+b") as handle:  # read from disk as a user's checkpoint is, not from the page cache
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    from harness.inprocess import load

    custom = root / "custom_nodes"
    custom.mkdir()
    nodes = load(custom, root)
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    def run(name, *a, **k):
        return nodes.NODE_CLASS_MAPPINGS[name].execute(*a, **k).result

    cell = args.cell
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    start = time.perf_counter()
    model, bundle = run("IMAGPoseModelLoader", "tiny-imagpose.safetensors", "none", "auto", "auto")
    load_s = time.perf_counter() - start
    encoder = run("IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    source, poses = torch.rand(1, cell, cell, 3), torch.rand(4, cell, cell, 3)
    positive, negative = run("IMAGPoseFLCEncode", encoder, bundle, vae, source, 0, False, cell, cell, "pad")
    (positive,), (negative,), (latent,), *_ = run("IMAGPoseILCPack", positive, negative, vae, source, poses[1:],
                                                  cell, cell, "pad", "auto", source_poses=poses[:1])
    page_faults = []  # (minor, major) per sampling: weights read lazily from a memory-mapped file show up here

    def sample():
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        nodes.KSampler().sample(model, 0, args.steps, 2.0, "ddim", "simple", positive, negative, latent)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        page_faults.append((after.ru_minflt - before.ru_minflt, after.ru_majflt - before.ru_majflt))
        return seconds

    if args.profile_first:
        import cProfile

        profiler = cProfile.Profile()
        first_s = profiler.runcall(sample)
        profiler.dump_stats(args.profile_first)
    else:
        first_s = sample()
    later_s = min(sample(), sample())
    comfy_s = later_s / args.steps

    del model, bundle, encoder  # the plain model's turn: free the ComfyUI one (SD1.5 size fits twice in no small machine)
    comfy.model_management.unload_all_models()
    gc.collect()
    plain = checkpoints.build_model(checkpoints.load_weights(root / "imagpose" / "tiny-imagpose.safetensors"))
    context = positive[0][0]
    lat = latent["samples"]
    noisy = torch.randn(2, 9, lat.shape[-2], lat.shape[-1])
    pose = torch.rand(2, 3, cell * 2, cell * 2)
    step_times = []
    with torch.no_grad():
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            plain(noisy, torch.tensor([500.0]), torch.cat([context, context]), pose)
            step_times.append(time.perf_counter() - start)
    plain_s = sum(step_times[1:]) / args.steps
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    from comfy.ldm.modules.attention import optimized_attention

    print(f"size={args.size} cell={cell}x{cell} grid={2 * cell}x{2 * cell} threads={torch.get_num_threads()} "
          f"ComfyUI attention={optimized_attention.__name__}")
    print(f"loader: {load_s:.2f} s")
    print(f"ComfyUI KSampler (cond+uncond): {comfy_s:.3f} s/step")
    print(f"plain IMAGPoseModel, batch 2:  {plain_s:.3f} s/step")
    print(f"ComfyUI first sampling ({args.steps} steps): {first_s:.2f} s, later: {later_s:.2f} s, "
          f"first-sample overhead: {first_s - later_s:.2f} s")
    print(f"page faults (minor/major) in the first sampling: {page_faults[0][0]}/{page_faults[0][1]}, "
          f"in later ones: {page_faults[1][0]}/{page_faults[1][1]}, {page_faults[2][0]}/{page_faults[2][1]}")
    print(f"plain model first call: {step_times[0]:.2f} s, later: {plain_s:.2f} s, "
          f"first-call overhead: {step_times[0] - plain_s:.2f} s")
    print(f"peak RSS: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()

"""Peak memory of ComfyUI's SD VAE (encode and decode) per image pixel: the figures the nodes' memory checks use.

    python benchmarks/vae_memory.py [--sizes 256x256,512x512] [--threads 1]

Each measurement runs in a fresh process (ComfyUI on the CPU unless --gpu): the VAE works once to warm up, the
process's peak resident memory (VmHWM) is reset, and the second run's peak above the resting memory is printed, in
MiB and in bytes per image pixel. The VAE has SD's shape with random weights (speed and memory do not depend on them).
Compare `CPU_VAE_ENCODE_BYTES_PER_PIXEL` / `CPU_VAE_DECODE_BYTES_PER_PIXEL` in imagpose/comfyui/memory.py.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field))


def measure(mode: str, height: int, width: int, vae_path: str, threads: int) -> None:
    """In this process: peak memory of one VAE encode or decode above the resting memory."""
    from harness.env import prepare_inprocess_comfyui

    prepare_inprocess_comfyui()
    import torch

    torch.set_num_threads(threads)
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    x = torch.rand(1, height, width, 3) if mode == "encode" else torch.randn(1, 4, height // 8, width // 8)
    work = vae.encode if mode == "encode" else vae.decode
    work(x)  # warm-up: weights loaded, allocator pools filled
    resting = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current resident size
    work(x)
    peak = (status_kib("VmHWM") - resting) * 1024
    print(f"{mode:6s} {width}x{height}: peak {peak / 2**20:8.0f} MiB above resting, "
          f"{peak / (height * width):8.0f} bytes per image pixel", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256x256,512x512", help="image sizes WxH, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--measure", nargs=4, metavar=("MODE", "H", "W", "VAE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        mode, height, width, vae_path = args.measure
        measure(mode, int(height), int(width), vae_path, args.threads)
        return
    from imagpose.testing import write_random_sd_vae

    with tempfile.TemporaryDirectory() as folder:
        vae_path = str(write_random_sd_vae(Path(folder) / "vae.safetensors"))
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            for mode in ("encode", "decode"):
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--measure", mode,
                                str(height), str(width), vae_path], check=True, env=env)


if __name__ == "__main__":
    main()

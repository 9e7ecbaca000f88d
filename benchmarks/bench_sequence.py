"""Targets per second and peak memory of pose sequences through a real ComfyUI server, against 1 -> 1 runs.

    python benchmarks/bench_sequence.py [--ns 1,3,6,12,24] [--cell 64] [--steps 4] [--grids-per-batch 2] [--repeats 2]

Starts ComfyUI (`main.py --cpu`) with the pack and the small random-weight test models, and queues the shipped
workflow "IMAGPose 6 - one photo through a pose sequence" (one source photo, N target poses taken from the
12-frame pose file; 24 = the file twice) three ways for every N:

- one batch: ILC Pack batching = one_batch, all ceil(N / 3) grids in one KSampler batch;
- chunks: batching = chunks, at most --grids-per-batch grids per KSampler run (ComfyUI runs the list one by one);
- 1 -> 1: N separate prompts with one target pose each (ImageFromBatch picks the pose), as without this feature.

Time is the CPU time the server process spends on each prompt (user + system, all threads, from /proc; torch
runs on one thread, OMP_NUM_THREADS=1), which other processes on a shared machine do not inflate; the wall time
of the server's own execution (execution_start to execution_success) is printed too. The loaders, FLC Encode
and the source's pose extraction are cached after the first prompt, as on a user's server. Peak memory is
the server process's peak resident memory during the prompt above its resident memory before it (the peak is
reset through /proc/<pid>/clear_refs before each prompt; 0 when the process already held the memory it needed).
Preview and animation outputs are left out, so the three ways do the same work per target: pack, sample, decode,
unpack, save. With --repeats R every measurement is taken R times, interleaved, and the fastest time (and the
largest peak) is kept: on a shared machine the other runs' load only ever adds time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness import (  # noqa: E402
    WORKFLOWS_DIR,
    ComfyServer,
    ensure_test_models,
    link_models,
    load_workflow,
    make_base_dir,
    nodes_of_type,
    output_images,
    remove_base_dir,
    set_run_settings,
    ui_to_api,
    write_inputs,
)

SEQUENCE_WORKFLOW = "IMAGPose 6 - one photo through a pose sequence"
SEQUENCE_FRAMES = 12  # frames of imagpose_pose_sequence.png


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def base_prompt(object_info: dict, cell: int, steps: int) -> tuple[dict, str, list]:
    """The shipped sequence workflow on the test models, without preview/animation; (prompt, ILC id, poses link)."""
    prompt = ui_to_api(load_workflow(WORKFLOWS_DIR / f"{SEQUENCE_WORKFLOW}.json"), object_info)
    set_run_settings(prompt, checkpoint="tiny-imagpose.safetensors", image_encoder="tiny-dinov2",
                     vae="tiny-vae.safetensors", width=cell, height=cell, steps=steps, prefix="bench")
    for kind in ("PreviewImage", "SaveAnimatedWEBP"):
        for node_id in nodes_of_type(prompt, kind):
            del prompt[node_id]
    (ilc_id,) = nodes_of_type(prompt, "IMAGPoseILCPack")
    poses = prompt[ilc_id]["inputs"]["target_poses"]
    prompt["800"] = {"class_type": "ImageBatch", "inputs": {"image1": poses, "image2": poses}}  # 24 poses
    # the source pose extracted once (cached across prompts), not by every ILC Pack run: 1 -> 1 runs pay no extra
    prompt["802"] = {"class_type": "IMAGPosePoseExtract", "inputs": {
        "images": prompt[ilc_id]["inputs"]["source_images"], "detector": "auto", "include_hands": True,
        "include_face": False, "person": "largest", "person_index": 0, "on_no_person": "error"}}
    prompt[ilc_id]["inputs"]["source_poses"] = ["802", 0]
    return prompt, ilc_id, ["800", 0]


def with_poses(prompt: dict, ilc_id: str, all_poses: list, first: int, count: int, **ilc) -> dict:
    prompt = {k: {**v, "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    prompt["801"] = {"class_type": "ImageFromBatch", "inputs": {"image": all_poses, "batch_index": first,
                                                               "length": count}}
    prompt[ilc_id]["inputs"].update(target_poses=["801", 0], **ilc)
    return prompt


def fastest(results: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return min(r[0] for r in results), min(r[1] for r in results), max(r[2] for r in results)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run(server: ComfyServer, prompt: dict, expected_images: int) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds of the execution, peak MiB above the resident memory before) of one prompt."""
    pid = server.process.pid
    before = memory_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    cpu = cpu_seconds(pid)
    entry = server.client.run(prompt, timeout=3600)
    cpu = cpu_seconds(pid) - cpu
    peak = memory_kib(pid, "VmHWM")
    times = {m[0]: m[1]["timestamp"] for m in entry["status"]["messages"] if isinstance(m[1], dict) and "timestamp" in m[1]}
    wall = (times["execution_success"] - times["execution_start"]) / 1000
    (save_id,) = nodes_of_type(prompt, "SaveImage")
    got = len(output_images(entry, save_id))
    if got != expected_images:
        raise RuntimeError(f"{got} images saved, expected {expected_images}")
    return cpu, wall, max(peak - before, 0) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", default="1,3,6,12,24", help="numbers of target poses (at most 24)")
    parser.add_argument("--cell", type=int, default=64, help="cell side in pixels (multiple of 64)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grids-per-batch", type=int, default=2, help="chunk size for the chunked runs")
    parser.add_argument("--repeats", type=int, default=1, help="measure each way this often, keep the fastest")
    args = parser.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    if max(ns) > 2 * SEQUENCE_FRAMES:
        parser.error(f"at most {2 * SEQUENCE_FRAMES} target poses")

    base = make_base_dir(tempfile.mkdtemp(prefix="imagpose-bench-sequence-"))
    link_models(base / "models", ensure_test_models())
    write_inputs(base / "input")
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    try:
        with ComfyServer(base, extra_args=["--use-pytorch-cross-attention"], env=threads) as server:
            prompt, ilc_id, all_poses = base_prompt(server.client.object_info(), args.cell, args.steps)
            run(server, with_poses(prompt, ilc_id, all_poses, 0, 3), 3)  # warm-up: loaders, FLC, first sampling
            for n in ns:
                grids = -(-n // 3)
                ways = {
                    "one": [(with_poses(prompt, ilc_id, all_poses, 0, n, batching="one_batch", grids_per_batch=grids),
                             n)],
                    "chunks": [(with_poses(prompt, ilc_id, all_poses, 0, n, batching="chunks",
                                           grids_per_batch=args.grids_per_batch), n)],
                    "single": [(with_poses(prompt, ilc_id, all_poses, i, 1), 1) for i in range(n)],
                }
                results = {way: [] for way in ways}
                for _ in range(args.repeats):
                    for way, prompts in ways.items():
                        runs = [run(server, p, images) for p, images in prompts]
                        results[way].append(tuple(f(r[i] for r in runs) for i, f in enumerate((sum, sum, max))))
                best = {way: fastest(results[way]) for way in ways}
                rows.append((n, grids, best))
                print(f"N={n}: CPU s (wall s) one batch {best['one'][0]:.1f} ({best['one'][1]:.1f}), chunks "
                      f"{best['chunks'][0]:.1f} ({best['chunks'][1]:.1f}), 1->1 runs {best['single'][0]:.1f} "
                      f"({best['single'][1]:.1f})", flush=True)
    finally:
        remove_base_dir(base)

    print(f"\ncell {args.cell}x{args.cell} (grid {2 * args.cell}x{2 * args.cell}), {args.steps} steps, cfg 2.0, "
          f"1 source, chunks of {args.grids_per_batch} grids, OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}, "
          f"best of {args.repeats}; targets/s from CPU time (from wall time in brackets)")
    print("| N | grids | one batch: targets/s | peak MiB | chunks: targets/s | peak MiB | 1 -> 1 runs: targets/s "
          "| peak MiB | one batch vs 1 -> 1 | chunks vs 1 -> 1 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, grids, best in rows:
        cells = []
        for way in ("one", "chunks", "single"):
            cpu, wall, peak = best[way]
            cells += [f"{n / cpu:.2f} ({n / wall:.2f})", f"{peak:.0f}"]
        single = best["single"][0]
        cells += [f"{single / best['one'][0]:.2f}x", f"{single / best['chunks'][0]:.2f}x"]
        print(f"| {n} | {grids} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

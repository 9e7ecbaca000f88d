"""`python -m trainer.evaluate`: the nodes' conditioning, resumable generation, atomic outputs, bad input named.

The multi-process run on the README's tiny setup is in tests/test_trainer_readme.py; here one process, few steps.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagpose import grid
from imagpose.checkpoints import build_model, load_weights
from imagpose.image_encoder import load_dinov2
from imagpose.model import LATENT_SCALE
from trainer import evaluate as evaluate_lib
from trainer import generate
from trainer.sources import load_vae
from trainer.testing import write_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CELL = 64
TOLERANCE = 1e-4


def picture(seed: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: a smooth random picture (photos and poses of another size than the cell)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 5, generator=generator), size=(height, width),
                                           mode="bilinear")


@pytest.mark.parametrize("name,targets,replicate", [("1->3", 3, False), ("1->1 repeat-source", 1, False),
                                                    ("1->1 repeat-pose", 1, True)])
def test_evaluation_conditioning_is_the_nodes_conditioning(comfy_nodes, tiny_models, name, targets, replicate):
    """FLC Encode + ILC Pack (in a real ComfyUI) attach exactly what trainer.generate builds, photos fitted alike."""
    import comfy.sd
    import comfy.utils

    _, paths = tiny_models
    comfy_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    diffusers_vae = load_vae(paths["vae"])  # the trainer's reader of the same file (diffusers key names)
    model = build_model(load_weights(paths["pack"]))
    dino = load_dinov2(paths["dinov2"])
    source, source_pose = picture(1, 96, 72), (picture(2, 96, 72) > 0.6).float()
    poses = torch.cat([(picture(3 + i, 96, 72) > 0.6).float() for i in range(targets)])
    if replicate:
        poses = poses.expand(3, -1, -1, -1)
    settings = generate.Sampling(cell_height=CELL, cell_width=CELL, fit="pad")
    layout = grid.make_layout(1, poses.shape[0], CELL, CELL)
    ours = generate.grid_conditioning(model, diffusers_vae, dino, layout, source, source_pose, poses, settings, 8)

    run = lambda node, *args, **kw: comfy_nodes.NODE_CLASS_MAPPINGS[node].execute(*args, **kw).result  # noqa: E731
    nhwc = lambda t: t.movedim(1, -1).contiguous()  # noqa: E731
    _, bundle = run("IMAGPoseModelLoader", "tiny-imagpose.safetensors", "none", "auto", "auto")
    encoder = run("IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    positive, negative = run("IMAGPoseFLCEncode", encoder, bundle, comfy_vae, nhwc(source), 0, False, CELL, CELL, "pad")
    (positive,), _, _, node_layout, _ = run("IMAGPoseILCPack", positive, negative, comfy_vae, nhwc(source), nhwc(poses),
                                            CELL, CELL, "pad", "auto", source_poses=nhwc(source_pose))
    context, options = positive[0]
    (node_grid,) = node_layout.grids
    assert (node_grid.cell_sources, node_grid.target_cells) == (layout.cell_sources, layout.target_cells)
    assert torch.equal(ours["flags"], options["concat_mask"])
    assert torch.equal(ours["pose_grid"], options["model_conds"]["imagpose_pose"].cond)
    latent_diff = (ours["masked_latent"] - options["concat_latent_image"] * LATENT_SCALE).abs().max().item()
    context_diff = (ours["context"] - context).abs().max().item()
    print(f"{name}: masked latent {latent_diff:.2e}, FLC context {context_diff:.2e}")
    assert latent_diff <= TOLERANCE and context_diff <= TOLERANCE


def test_batches_do_not_depend_on_the_number_of_processes():
    jobs = evaluate_lib.make_jobs([[f"s{i // 4}", f"t{i}"] for i in range(11)], ["1to1", "1to3"], "repeat-pose")
    batches = evaluate_lib.plan_batches(jobs, 4)
    assert Counter(j for b in batches for j in b) == Counter(jobs), "every grid in one batch"
    assert all(len({(j.mode, len(j.targets), j.replicate) for j in b}) == 1 and len(b) <= 4 for b in batches)
    shards = {n: [batches[r::n] for r in range(n)] for n in (1, 2, 3)}
    for n, parts in shards.items():  # every batch exactly once, unchanged, whatever the process count
        assert sorted(map(id, (b for part in parts for b in part))) == sorted(map(id, batches)), n


def test_jobs_cover_every_pair_once_per_mode():
    pairs = [["a", "b"], ["a", "c"], ["a", "d"], ["a", "e"], ["f", "a"]]
    jobs = evaluate_lib.make_jobs(pairs, ["1to1", "1to3"], "repeat-pose")
    one = [j for j in jobs if j.mode == "1to1"]
    three = [j for j in jobs if j.mode == "1to3"]
    assert [(j.source, j.targets) for j in one] == [(s, (t,)) for s, t in pairs] and all(j.replicate for j in one)
    assert [(j.source, j.targets) for j in three] == [("a", ("b", "c", "d")), ("a", ("e",)), ("f", ("a",))]
    assert one[0].layout(64, 64).cell_sources == (0, None, None, None)  # S,T,T,T: the target pose three times
    source_first = evaluate_lib.make_jobs(pairs, ["1to1"], "repeat-source")[0]
    assert source_first.layout(64, 64).cell_sources == (0, 0, 0, None)  # S,S,S,T: authors' test.py, the nodes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny setup with its DeepFashion tree prepared (DWPose stand-ins: fast) and a random pack checkpoint."""
    from harness.pose_fixtures import write_two_person_dwpose
    from imagpose.checkpoints import save_pack
    from imagpose.testing import make_tiny_model
    from trainer.prepare import main as prepare_main
    from trainer.testing import DEEPFASHION_SIZE

    root = tmp_path_factory.mktemp("evaluate")
    paths = write_setup(root)
    dwpose_dir = write_two_person_dwpose(root / "dwpose", *DEEPFASHION_SIZE)
    assert prepare_main([str(paths["deepfashion"]), "--out", str(root / "prepared"), "--detector", "dwpose",
                         "--dwpose-dir", str(dwpose_dir)]) == 0
    paths["checkpoint"] = save_pack(make_tiny_model(seed=5), root / "tiny-imagpose.safetensors")
    return root, paths


def evaluate(prepared, out: Path, *options: str) -> int:
    root, paths = prepared
    return evaluate_lib.main(["--checkpoint", str(paths["checkpoint"]), "--vae", str(paths["vae"]),
                              "--image-encoder", str(paths["image_encoder"]), "--prepared", str(root / "prepared"),
                              "--out", str(out), "--cell", f"{CELL}x{CELL}", "--metric-weights",
                              str(paths["metric_weights"]), "--steps", "2", "--sizes", "256x176", *options])


def outputs(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("*/images/*.png"))}


@pytest.fixture(scope="module")
def evaluated(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert evaluate(prepared, out, "--batch-size", "2") == 0
    return out


def test_outputs_are_complete_and_named(prepared, evaluated):
    root, _ = prepared
    manifest = json.loads((root / "prepared" / "prepared.json").read_text())
    summary = json.loads((evaluated / "metrics.json").read_text())
    pairs = manifest["test_pairs"]
    for mode in ("1to1", "1to3"):
        images = sorted((evaluated / mode / "images").glob("*.png"))
        assert [p.name for p in images] == sorted(f"{Path(s).stem}_2_{Path(t).stem}.png" for s, t in pairs)
        with Image.open(images[0]) as image:
            assert image.size == (44, 64)  # the 176x256 frame inside a 64x64 cell (pad), bars cut off
        assert (evaluated / mode / "sheet.png").is_file() and (evaluated / mode / "pairs-256x176.csv").is_file()
        values = summary["results"][mode]["256x176"]
        assert -1 < values["ssim"] < 1 and values["lpips_pcdms"] > 0 and values["lpips_standard"] > 0
        assert np.isfinite(values["fid"]) and values["counted"]["ssim_pairs"] == len(pairs)
        assert values["counted"]["fid_real"] == len(manifest["train_images"])
    assert summary["grids"] == {"1to1": 6, "1to3": 4}
    settings = summary["settings"]
    assert settings["steps"] == 2 and settings["cfg"] == 2.0 and settings["seed"] == 42 and settings["fit"] == "pad"
    assert settings["single_target"] == "repeat-pose" and settings["lpips"]["feeds"].keys() == {"pcdms", "standard"}
    assert not list(evaluated.rglob(".*.partial"))


def test_rerun_skips_finished_images_and_refuses_other_settings(prepared, evaluated, capsys):
    before = outputs(evaluated)
    first = json.loads((evaluated / "metrics.json").read_text())["results"]
    assert evaluate(prepared, evaluated, "--batch-size", "2", "--modes", "1to1") == 0
    assert "this one generates 0" in capsys.readouterr().out
    assert outputs(evaluated) == before
    again = json.loads((evaluated / "metrics.json").read_text())["results"]
    assert again == {"1to1": first["1to1"]}, "metrics must be reproducible"
    assert evaluate(prepared, evaluated, "--cfg", "3.0") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "'cfg': (2.0, 3.0)" in err


def test_an_interrupted_run_finishes_only_what_is_missing(prepared, evaluated, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(evaluated, out)
    (out / "metrics.json").unlink()
    missing = sorted((out / "1to3" / "images").glob("*.png"))[0]
    missing.unlink()
    (missing.parent / f".{missing.name}.partial").write_bytes(b"half a png")  # what a kill leaves
    before = outputs(out)
    assert evaluate(prepared, out, "--batch-size", "2", "--modes", "1to3") == 0
    assert "this one generates 2 grids" in capsys.readouterr().out  # the missing image's batch of two
    after = outputs(out)
    assert missing in after and all(after[p] == t for p, t in before.items()), "finished images are kept"
    with Image.open(missing) as again, Image.open(evaluated / missing.relative_to(out)) as first:
        assert np.array_equal(np.asarray(again), np.asarray(first)), "the same batch gives the same image"
    assert (out / "metrics.json").is_file()


def test_bad_photos_and_poses_are_named_or_skipped(prepared, tmp_path, capsys):
    root, paths = prepared
    copy = tmp_path / "prepared"
    shutil.copytree(root / "prepared", copy, symlinks=False)
    manifest = json.loads((copy / "prepared.json").read_text())
    source, target = manifest["test_pairs"][0]  # its target is the source of a later pair too
    pose = copy / "dwpose" / f"{Path(target).stem}.png"
    Image.new("RGB", (30, 30)).save(pose)
    args = lambda out, *more: ["--checkpoint", str(paths["checkpoint"]), "--vae", str(paths["vae"]),  # noqa: E731
                               "--image-encoder", str(paths["image_encoder"]), "--prepared", str(copy), "--out",
                               str(out), "--cell", "64x64", "--metric-weights", str(paths["metric_weights"]),
                               "--steps", "1", "--sizes", "256x176", "--modes", "1to1", "--limit", "4", *more]
    assert evaluate_lib.main(args(tmp_path / "a")) == 2
    assert f"pose image {pose} is 30x30" in capsys.readouterr().err
    assert not (tmp_path / "a" / "metrics.json").exists()
    assert evaluate_lib.main(args(tmp_path / "b", "--skip-bad")) == 0
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert summary["skipped_grids"] == 2  # of the first four pairs: the one with that target, the one with it as source
    assert summary["results"]["1to1"]["256x176"]["counted"]["ssim_pairs"] == 2
    (copy / target).unlink()
    (copy / target).write_bytes(b"not a jpeg")
    assert evaluate_lib.main(args(tmp_path / "c")) == 2
    assert f"image {copy / target} could not be read" in capsys.readouterr().err


def test_missing_metric_weights_stop_before_generating(prepared, tmp_path, capsys):
    root, paths = prepared
    assert evaluate_lib.main(["--checkpoint", str(paths["checkpoint"]), "--vae", str(paths["vae"]),
                              "--image-encoder", str(paths["image_encoder"]), "--prepared", str(root / "prepared"),
                              "--out", str(tmp_path / "out"), "--metric-weights", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none' / 'inception_v3_google-0cc3c7bd.pth'} not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recorded", [None, "bicubic-size"])
def test_dinov2_runs_with_the_position_resampling_the_checkpoint_records(prepared, tmp_path, recorded):
    """As the nodes' loader: the pack's image_encoder_positions, else the authors' resampling."""
    from argparse import Namespace

    from imagpose.checkpoints import POSITIONS_KEY, save_pack
    from imagpose.image_encoder import AUTHORS_POSITIONS
    from imagpose.testing import make_tiny_model

    _, paths = prepared
    pack = save_pack(make_tiny_model(seed=5), tmp_path / "pack.safetensors",
                     {POSITIONS_KEY: recorded} if recorded else None)
    args = Namespace(checkpoint=pack, vae=paths["vae"], image_encoder=paths["image_encoder"], dtype="fp32")
    generator = evaluate_lib.Generator(args, generate.Sampling(cell_height=CELL, cell_width=CELL), torch.device("cpu"))
    expected = recorded or AUTHORS_POSITIONS
    assert generator.encoder.positions == expected
    table = lambda encoder: encoder.model.embeddings.position_embeddings  # noqa: E731
    assert torch.equal(table(generator.encoder), table(load_dinov2(paths["image_encoder"], expected)))
    assert recorded is None or not torch.equal(table(generator.encoder), table(load_dinov2(paths["image_encoder"])))

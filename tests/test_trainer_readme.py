"""trainer/README.md's tiny walk-through, run line by line exactly as written (only /tmp/imagpose-tiny is moved).

Then what each command promised: poses as the pose nodes render them (MediaPipe on real photos), the photo without
a person reported, the photos shared by two processes, groups without test people, stages from
the SD1.5 single file and the AnimateDiff .ckpt with a progress bar, TensorBoard logs and validation sheets, and
an evaluation sharded over two processes with every metric at both sizes.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import deepfashion

REPO = Path(__file__).resolve().parents[1]
README = REPO / "trainer" / "README.md"
PLACEHOLDER = "/tmp/imagpose-tiny"


def walkthrough_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- tiny-walkthrough -->\s*```\n(.*?)```\s*<!-- /tiny-walkthrough -->", text, re.S)
    assert block, "trainer/README.md lost its tiny walk-through block"
    return [line.strip() for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "imagpose-tiny"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results = []
    for command in walkthrough_commands():
        result = subprocess.run(["bash", "-c", command.replace(PLACEHOLDER, str(root))], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        results.append((command, result))
    return root, results


def output_of(results, starts: str, index: int = 0):
    return [r for c, r in results if c.startswith(starts)][index]


def test_every_command_of_the_readme_is_in_the_walkthrough():
    commands = " ".join(walkthrough_commands())
    for module in ("trainer.testing", "trainer.prepare", "trainer.data build-groups", "trainer.train",
                   "trainer.evaluate"):
        assert module in commands, module
    assert "accelerate launch --multi_gpu" in commands


def test_prepare_renders_poses_as_the_pose_nodes_do(walked):
    from imagpose.pose import extract_pose_images

    root, results = walked
    prepared = root / "prepared"
    report = json.loads((prepared / "prepare-report.json").read_text())
    assert report["no_person"] == ["fashionWOMENBlouses_Shirtsid0000000201_7additional"]  # the coffee cup
    launched = output_of(results, "accelerate launch --multi_gpu --num_processes 2 -m trainer.prepare").stdout
    assert "1 photo(s) with no person found" in launched and "2 process(es)" in launched
    logs = {p.name: {json.loads(line)["name"] for line in p.read_text().splitlines()}
            for p in (prepared / "dwpose" / ".status").glob("*.jsonl")}
    names = {deepfashion.standard_stem(n) for lst in ("train.lst", "test.lst")
             for n in (root / "deepfashion" / lst).read_text().split()}
    assert sorted(logs) == ["process-0.jsonl", "process-1.jsonl"], "each process takes its share"
    assert not logs["process-0.jsonl"] & logs["process-1.jsonl"] and logs["process-0.jsonl"] | logs["process-1.jsonl"] == names
    for name in ("fashionWOMENDressesid0000000301_1front", "fashionMENDenimid0000000101_2side"):
        photo = np.asarray(Image.open(prepared / "image" / f"{name}.jpg").convert("RGB"), dtype=np.float32) / 255
        nodes = extract_pose_images(photo[None], detector="mediapipe", include_hands=True)[0].numpy()
        pose = np.asarray(Image.open(prepared / "dwpose" / f"{name}.png"), dtype=np.float32) / 255
        assert pose.shape == photo.shape and pose.max() > 0
        assert np.abs(pose - nodes).max() <= 1 / 255, name
    manifest = json.loads((prepared / "prepared.json").read_text())
    assert len(manifest["test_pairs"]) == 6 and len(manifest["train_images"]) == 7


def test_groups_hold_no_test_person(walked):
    root, _ = walked
    test_people = {deepfashion.person_of(n) for n in deepfashion.read_split(root / "deepfashion" / "test.lst")}
    for groups in (root / "groups.json", root / "prepared" / "groups.json"):
        grouped = [p for g in json.loads(groups.read_text()) for p in g]
        assert grouped and not {deepfashion.person_of(p) for p in grouped} & test_people


def test_stages_start_from_the_files_people_have_and_are_observable(walked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, results = walked
    stage1 = output_of(results, "python -m trainer.train --config")
    assert "stage1: 100%" in stage1.stderr and re.search(r"\d\d:\d\d<\d\d:\d\d", stage1.stderr)  # tqdm: elapsed<ETA
    assert "CVA initialised from" in output_of(results, "python -m trainer.train --config", 1).stderr
    assert "mm_tiny_v2.ckpt" in output_of(results, "python -m trainer.train --config", 1).stderr
    for stage in ("stage1", "stage2", "end2end"):
        run = root / "runs" / stage
        assert (run / "validation" / "step-0000002.png").is_file(), stage
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        events = EventAccumulator(str(run / f"imagpose-{stage}"), size_guidance={"images": 0})
        events.Reload()
        assert [s.step for s in events.Scalars("loss")] == [1, 2], stage
        assert [i.step for i in events.Images("validation")] == [2], stage
    with Image.open(root / "runs" / "stage1" / "validation" / "step-0000002.png") as sheet:
        assert sheet.height == 2 * 2 * 256  # 2 groups x 2 targets, one row each


def test_evaluation_sharded_over_two_processes(walked):
    root, results = walked
    evaluation = output_of(results, "accelerate launch --multi_gpu --num_processes 2 -m trainer.evaluate")
    assert "2 process(es)" in evaluation.stdout
    summary = json.loads((root / "eval" / "metrics.json").read_text())
    assert summary["settings"]["processes"] == 2 and summary["settings"]["steps"] == 20
    assert summary["settings"]["cfg"] == 2.0 and summary["settings"]["sampler"].startswith("ddim")
    for mode in ("1to1", "1to3"):
        assert len(list((root / "eval" / mode / "images").glob("*.png"))) == 6
        for size in ("256x176", "512x352"):
            values = summary["results"][mode][size]
            assert values["counted"] == {"ssim_pairs": 6, "lpips_pairs": 6, "fid_generated": 6, "fid_real": 7}
            assert all(np.isfinite(values[k]) for k in ("ssim", "lpips_pcdms", "lpips_standard", "fid"))
    print(json.dumps(summary["results"], indent=1))

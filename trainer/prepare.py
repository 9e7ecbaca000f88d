"""DeepFashion In-shop -> everything training and evaluation read, in one resumable command.

    python -m trainer.prepare DEEPFASHION_ROOT --out data/deepfashion
    accelerate launch --multi_gpu --num_processes N -m trainer.prepare DEEPFASHION_ROOT --out data/deepfashion

DEEPFASHION_ROOT holds `img_highres/` (the In-shop photos, nested `MEN/<category>/id_XXXXXXXX/NN_V_view.jpg` or
already flat standard names), the standard split `train.lst` / `test.lst` and the test pairs
`fasion-resize-pairs-test.csv` (`from,to`; `test_pairs.txt` and PCDMs' `test_data.json` are read too).

Writes under OUT:
    image/<standard name>      the photos of both lists under their standard names (symbolic links; --copy-images)
    dwpose/<standard stem>.png the DWPose-style pose image of every photo, same size as the photo (body + hands)
    groups.json                training groups (person + outfit), training people only
    test-groups.json           the same for the test people (validation sheets)
    prepared.json              the manifest `trainer.evaluate` reads: test pairs, FID real set, pose rule, report
    prepare-report.json        photos with no person / several people / unreadable, pairs left out

Poses come from the pack's own extraction (`imagpose.pose`: DWPose ONNX when its files are found, else MediaPipe),
the largest person rendered exactly as the pose nodes render. Finished pose images are skipped on a rerun (each is
written under a temporary name and renamed when complete); the processes of `accelerate launch` each take every
N-th photo.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import deepfashion
from .processes import process_state
from .data import DataError, PoseRule, Split, build_groups

POSE_TEMPLATE = "{dir}/../dwpose/{stem}.png"  # the pose of OUT/image/X.jpg is OUT/dwpose/X.png
MANIFEST = "prepared.json"
REPORT = "prepare-report.json"
FORMAT = "imagpose-deepfashion"
STATUS_DIR = ".status"  # inside dwpose/: one JSON line per photo done, per process
LISTED = 20  # names shown per problem in the printed summary (all are in the report file)


class PrepareError(ValueError):
    """Unusable input for preparation; the message names the file."""


def write_atomic(path: Path, data: bytes | str) -> None:
    temp = path.with_name(f".{path.name}.partial")
    temp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(temp, path)


def read_photo(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise PrepareError(f"photo {path} could not be read ({error})") from error


def photo_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header."""
    with Image.open(path) as image:
        return image.size


def read_status(folder: Path) -> dict[str, dict]:
    """Per photo stem, the last status line any process wrote (broken trailing lines of a killed run are ignored)."""
    status = {}
    for path in sorted((folder / STATUS_DIR).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            status[entry["name"]] = entry
    return status


class PoseWriter:
    """Pose images of photos: detect, keep the largest person, render DWPose-style, write atomically, log status."""

    def __init__(self, out: Path, detector: str, model_dirs: list[str], rank: int, device_id: int):
        from imagpose.pose import get_backend

        self.folder = out / "dwpose"
        (self.folder / STATUS_DIR).mkdir(parents=True, exist_ok=True)
        self.backend = get_backend(detector, model_dirs, device_id)
        self.log = (self.folder / STATUS_DIR / f"process-{rank}.jsonl").open("a")

    def record(self, name: str, **entry) -> dict:
        entry = {"name": name, **entry}
        self.log.write(json.dumps(entry) + "\n")
        self.log.flush()
        return entry

    def __call__(self, name: str, photo: Path, skip_bad: bool) -> dict:
        from imagpose.pose import extract_poses, render_frame, select_people
        from imagpose.pose.keypoints import PoseFrame

        try:
            rgb = read_photo(photo)
        except PrepareError as error:
            if not skip_bad:
                raise
            return self.record(name, result="unreadable", error=str(error))
        frame = extract_poses(rgb, backend=self.backend, include_hands=True, person="all", on_missing="empty")[0]
        people = select_people(frame.people, "all")
        if not people:
            return self.record(name, result="no_person", people=0)
        largest = select_people(people, "largest")
        drawn = render_frame(PoseFrame(frame.width, frame.height, largest), include_hands=True, include_face=False)
        target = self.folder / f"{name}.png"
        temp = self.folder / f".{name}.png.partial"
        Image.fromarray(drawn).save(temp, format="PNG")
        os.replace(temp, target)
        return self.record(name, result="pose", people=len(people), backend=self.backend.name)


def link_photo(source: Path, target: Path, copy: bool) -> None:
    if target.is_symlink() or target.exists():
        if not copy and target.is_symlink() and Path(os.readlink(target)) == source.resolve():
            return
        if copy and target.is_file() and not target.is_symlink() and target.stat().st_size == source.stat().st_size:
            return
        target.unlink()
    if not copy:
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:  # no symlinks here (Windows without developer mode): copy instead
            pass
    temp = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, temp)
    os.replace(temp, target)


def check_existing_pose(pose: Path, photo: Path) -> str | None:
    """None when a finished pose image fits its photo, else what is wrong with it."""
    try:
        pose_wh, photo_wh = photo_size(pose), photo_size(photo)
    except (OSError, ValueError, SyntaxError) as error:
        return f"pose image {pose} could not be read ({error})"
    if pose_wh != photo_wh:
        return (f"pose image {pose} is {pose_wh[0]}x{pose_wh[1]} but its photo {photo} is {photo_wh[0]}x{photo_wh[1]} "
                "(delete it to render it again)")
    return None


def selected_photos(args, index: deepfashion.ImageIndex) -> tuple[list[str], list[str], dict]:
    """Standard stems of the train and test lists found under the image folder, and what was missing."""
    missing = {}
    lists = {}
    for key, path in (("train", args.train_list), ("test", args.test_list)):
        try:
            names = deepfashion.read_split(path)
            lists[key], missing[key] = index.resolve(names, str(path), args.skip_missing)
        except deepfashion.SplitError as error:
            raise PrepareError(str(error)) from error
    overlap = set(lists["train"]) & set(lists["test"])
    if overlap:
        raise PrepareError(f"{len(overlap)} image(s) are in both {args.train_list} and {args.test_list}, e.g. "
                           f"{sorted(overlap)[:3]}")
    return lists["train"], lists["test"], missing


def render_poses(args, out: Path, stems: list[str], index: deepfashion.ImageIndex, state) -> None:
    """This process's share of the photos (every num_processes-th): render what is not finished yet."""
    from tqdm.auto import tqdm

    done = read_status(out / "dwpose")
    shard = stems[state.process_index :: state.num_processes]
    todo = []
    for name in shard:
        pose = out / "dwpose" / f"{name}.png"
        if pose.is_file():
            problem = check_existing_pose(pose, index.files[name])
            if problem and not args.skip_bad:
                raise PrepareError(problem)
            continue
        if done.get(name, {}).get("result") in ("no_person", "unreadable"):
            continue
        todo.append(name)
    if state.is_main_process:
        print(f"[prepare] {len(stems)} photos, {state.num_processes} process(es); this one renders {len(todo)} of its "
              f"{len(shard)} (the rest are done)", flush=True)
    if not todo:
        return
    device_id = state.local_process_index if state.device.type == "cuda" else 0
    writer = PoseWriter(out, args.detector, args.dwpose_dir, state.process_index, device_id)
    for name in tqdm(todo, desc=f"poses (process {state.process_index})", unit="photo",
                     disable=not state.is_main_process):
        writer(name, index.files[name], args.skip_bad)
    writer.log.close()


def summarise(out: Path, train: list[str], test: list[str], index, missing: dict, args) -> dict:
    """Groups, pairs and the manifest, from the finished pose images (main process)."""
    status = read_status(out / "dwpose")
    poses = {p.stem for p in (out / "dwpose").glob("*.png") if not p.name.startswith(".")}
    bad_poses = {}
    for name in sorted(poses & set(train + test)):
        problem = check_existing_pose(out / "dwpose" / f"{name}.png", index.files[name])
        if problem:
            bad_poses[name] = problem
    no_pose = sorted(set(train + test) - poses)
    unexplained = [n for n in no_pose if status.get(n, {}).get("result") not in ("no_person", "unreadable")]
    if unexplained:
        raise PrepareError(f"{len(unexplained)} photo(s) have no pose image and no recorded reason (an interrupted "
                           f"run?), e.g. {unexplained[:3]}: run the same command again to finish them")
    rule = PoseRule(template=POSE_TEMPLATE)
    try:
        split = Split.from_lists(args.train_list, args.test_list, "refuse")
        groups, group_report = build_groups(out / "image", out, pose_rule=rule, skip_missing_poses=True, split=split)
        test_split = Split(train=set(test), test_identities=None, test_policy="allow")
        test_groups, _ = build_groups(out / "image", out, pose_rule=rule, skip_missing_poses=True, split=test_split)
        pairs = deepfashion.read_pairs(args.pairs)
    except (DataError, deepfashion.SplitError) as error:
        raise PrepareError(str(error)) from error
    if bad_poses:  # only reachable with --skip-bad: leave those photos out of groups too
        bad = {image_name(index, n) for n in bad_poses}
        groups = [g for g in ([p for p in group if Path(p).as_posix() not in bad] for group in groups) if len(g) >= 2]
    test_set, usable = set(test), (poses - set(bad_poses))
    unknown = sorted({n for pair in pairs for n in pair if n not in test_set})
    if unknown and not args.skip_missing:
        raise PrepareError(f"{args.pairs} names {len(unknown)} image(s) that are not test images found under "
                           f"{index.root}, e.g. {unknown[:5]} (pass --skip-missing to leave those pairs out)")
    seen, kept, without_pose, duplicates = set(), [], [], 0
    for source, target in pairs:
        if source not in test_set or target not in test_set:
            continue
        if (source, target) in seen:
            duplicates += 1
            continue
        seen.add((source, target))
        if source not in usable or target not in usable:
            without_pose.append(f"{source},{target}")
            continue
        kept.append([image_name(index, source), image_name(index, target)])
    results = [status.get(n, {}) for n in train + test]
    report = {
        "photos": {"train": len(train), "test": len(test), "missing_from_folder": {k: v for k, v in missing.items()}},
        "no_person": sorted(n for n in train + test if status.get(n, {}).get("result") == "no_person"),
        "several_people": sorted(n for n, s in zip(train + test, results) if s.get("people", 0) > 1),
        "unreadable": sorted(n for n in train + test if status.get(n, {}).get("result") == "unreadable"),
        "pose_size_mismatch": bad_poses,
        "groups": group_report,
        "test_groups": len(test_groups),
        "pairs": {"listed": len(pairs), "kept": len(kept), "without_pose": without_pose,
                  "not_in_test_list": unknown, "duplicates": duplicates},
    }
    write_atomic(out / "groups.json", json.dumps(groups, indent=0))
    write_atomic(out / "test-groups.json", json.dumps(test_groups, indent=0))
    manifest = {
        "format": FORMAT, "version": 1,
        "pose_template": POSE_TEMPLATE,
        "groups": "groups.json", "test_groups": "test-groups.json",
        "test_pairs": kept,
        "train_images": [image_name(index, n) for n in train],  # the FID real set: every training photo
        "sources": {"images": str(index.root), "train_list": str(args.train_list), "test_list": str(args.test_list),
                    "pairs": str(args.pairs)},
    }
    write_atomic(out / REPORT, json.dumps(report, indent=1))
    write_atomic(out / MANIFEST, json.dumps(manifest))  # last: its presence means the preparation is complete
    return report


def image_name(index: deepfashion.ImageIndex, stem: str) -> str:
    return f"image/{stem}{index.files[stem].suffix.lower()}"


def print_report(report: dict, out: Path) -> None:
    def names(key):
        values = report[key]
        more = f" (+{len(values) - LISTED} more)" if len(values) > LISTED else ""
        return ", ".join(values[:LISTED]) + more

    print(f"[prepare] {report['photos']['train']} train / {report['photos']['test']} test photos; "
          f"{report['groups']['groups']} training groups ({report['groups']['images']} photos), "
          f"{report['test_groups']} test groups; {report['pairs']['kept']} of {report['pairs']['listed']} test pairs")
    for key, label in (("no_person", "no person found (left out)"), ("several_people", "several people (largest kept)"),
                       ("unreadable", "unreadable (skipped)")):
        if report[key]:
            print(f"[prepare] {len(report[key])} photo(s) with {label}: {names(key)}")
    if report["pairs"]["without_pose"]:
        print(f"[prepare] {len(report['pairs']['without_pose'])} test pair(s) left out: a photo without a pose")
    print(f"[prepare] written: {out / MANIFEST}, {out / 'groups.json'}, {out / REPORT}")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m trainer.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="DeepFashion folder (img_highres/, train.lst, test.lst, pairs)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (see above)")
    parser.add_argument("--images", type=Path, help="photo folder (default ROOT/img_highres)")
    parser.add_argument("--train-list", type=Path, help="default ROOT/train.lst")
    parser.add_argument("--test-list", type=Path, help="default ROOT/test.lst")
    parser.add_argument("--pairs", type=Path, help="test pairs (default ROOT/fasion-resize-pairs-test.csv, else "
                        "ROOT/test_pairs.txt or ROOT/test_data.json)")
    parser.add_argument("--detector", choices=("auto", "dwpose", "mediapipe"), default="auto",
                        help="auto: DWPose when yolox_l.onnx and dw-ll_ucoco_384.onnx are found, else MediaPipe")
    parser.add_argument("--dwpose-dir", action="append", default=[], metavar="DIR",
                        help="folder with the DWPose ONNX files (repeatable; ComfyUI's models/imagpose works)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out (and count) unreadable photos and pose images of the wrong size")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out (and count) list entries whose photo is not in the folder")
    parser.add_argument("--copy-images", action="store_true", help="copy photos into OUT/image instead of linking")
    args = parser.parse_args(argv)
    root = args.root
    args.images = args.images or root / "img_highres"
    args.train_list = args.train_list or root / "train.lst"
    args.test_list = args.test_list or root / "test.lst"
    if args.pairs is None:
        candidates = [root / n for n in ("fasion-resize-pairs-test.csv", "test_pairs.txt", "test_data.json")]
        args.pairs = next((p for p in candidates if p.is_file()), candidates[0])
    return args


def prepare(args) -> dict | None:
    state = process_state()
    out = args.out
    started = time.time()
    try:
        index = deepfashion.ImageIndex.scan(args.images)
    except deepfashion.SplitError as error:
        raise PrepareError(str(error)) from error
    train, test, missing = selected_photos(args, index)
    stems = sorted(train + test)
    if state.is_main_process:
        (out / "image").mkdir(parents=True, exist_ok=True)
        (out / "dwpose").mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # stale until this run completes
        for name in stems:
            link_photo(index.files[name], out / "image" / f"{name}{index.files[name].suffix.lower()}", args.copy_images)
    state.wait_for_everyone()
    render_poses(args, out, stems, index, state)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    report = summarise(out, train, test, index, missing, args)
    report["seconds"] = round(time.time() - started, 1)
    print_report(report, out)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prepare(args)
    except (PrepareError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

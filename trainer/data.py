"""DeepFashion-style training data: groups of photos of one person/outfit, each photo with a rendered pose image.

    python -m trainer.data build-groups IMAGE_DIR --out groups.json --pose-template "{dir}/../dwpose/{stem}.png"

A group file is a JSON list of lists of image paths (relative paths are read against the JSON file's
folder, or `data.root`). Each photo's pose image is found by a rule (see `PoseRule`); a missing pose image
is an error naming the file: never a silent fallback to the photo.

A sample is four cells of one group: distinct photos as far as the group allows, each resized to cover the
cell (aspect kept), cropped to it and flipped by ONE random crop position and ONE flip for the whole sample
(every cell and its pose image alike, as the authors' shared RNG state did); random roles (>= 1 source, >= 1 target); the FLC reference is one of the source cells.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from imagpose.grid import CELLS
from imagpose.training import random_cell_roles

from . import deepfashion

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ASPECT_TOLERANCE = 0.02  # a pose image may differ this much in aspect from its photo (rounding when rendered)


class DataError(ValueError):
    """Unusable training data; the message names the file and the rule involved."""


class PoseRule:
    """Where the pose image of a photo is.

    template: a path with {dir} (the photo's folder), {name} (file name), {stem} (name without extension)
    and {ext} (extension with its dot), e.g. "{dir}/../dwpose/{stem}.png".
    replace: (old, new): `old` replaced by `new` in the photo's path (the authors' "/image/" -> "/dwpose/");
    a path without `old` is an error (the authors' code then used the photo itself as its pose).
    """

    def __init__(self, template: str | None = None, replace: tuple[str, str] | list[str] | None = None):
        if (template is None) == (replace is None):
            raise DataError("give exactly one pose rule: a template or a (old, new) replacement")
        if replace is not None and (len(replace) != 2 or not replace[0]):
            raise DataError(f"pose replace rule must be two strings [old, new] with old non-empty, got {replace!r}")
        self.template = template
        self.replace = tuple(replace) if replace is not None else None

    def describe(self) -> str:
        if self.template is not None:
            return f"pose_template {self.template!r}"
        return f"pose_replace {self.replace[0]!r} -> {self.replace[1]!r}"

    def __call__(self, image_path: str | os.PathLike) -> Path:
        image_path = Path(image_path)
        if self.template is not None:
            try:
                return Path(os.path.normpath(self.template.format(dir=image_path.parent, name=image_path.name,
                                                                  stem=image_path.stem, ext=image_path.suffix)))
            except (KeyError, IndexError) as error:
                raise DataError(f"{self.describe()}: unknown placeholder {error}; use {{dir}} {{name}} {{stem}} {{ext}}")
        old, new = self.replace
        text = str(image_path)
        if old not in text:
            raise DataError(f"{self.describe()}: {old!r} does not occur in the image path {text}")
        return Path(text.replace(old, new))


def pose_rule_from_config(data: dict) -> PoseRule:
    return PoseRule(template=data.get("pose_template"), replace=data.get("pose_replace"))


def group_key(file_name: str) -> str | None:
    """Person/outfit id: the file name without extension and its last two `_` parts (None if it has < 3).

    DeepFashion's flat standard names (`fashionMENShirts_Polosid0000180202_4full`) group by person + clothes id.
    """
    stem = Path(file_name).stem
    match = deepfashion.STANDARD.match(stem)
    if match:
        return stem[: match.start("view") - 1]
    parts = stem.split("_")
    return "_".join(parts[:-2]) if len(parts) >= 3 else None


def identity_of(path: str | os.PathLike) -> str | None:
    """Who a photo shows, to keep test people out of training: DeepFashion's person id, else the group key."""
    return deepfashion.person_of(path) or group_key(Path(path).name)


TEST_IDENTITY_POLICIES = ("refuse", "drop", "allow")


@dataclass
class Split:
    """Which photos may enter training groups.

    train: standard stems of the training list (others are left out), or None for every photo;
    test_identities: identities (see identity_of) of the test list; a photo showing one is refused (an error naming
    the photos), dropped and counted ('drop') or kept ('allow', explicit). Without a test list, DeepFashion photos
    are refused unless 'allow': their folder holds the test people too.
    """

    train: set[str] | None = None
    test_identities: set[str] | None = None
    test_policy: str = "refuse"

    @classmethod
    def from_lists(cls, train_list: str | os.PathLike | None = None, test_list: str | os.PathLike | None = None,
                   test_policy: str = "refuse") -> "Split":
        if test_policy not in TEST_IDENTITY_POLICIES:
            raise DataError(f"test identity policy must be one of {TEST_IDENTITY_POLICIES}, got {test_policy!r}")
        try:
            train = set(deepfashion.read_split(train_list)) if train_list else None
            test = deepfashion.read_split(test_list) if test_list else None
        except deepfashion.SplitError as error:
            raise DataError(str(error)) from error
        identities = {identity_of(name) for name in test} - {None} if test is not None else None
        return cls(train, identities, test_policy)

    def admit(self, path: Path, counts: dict, leaked: list[Path]) -> bool:
        """Whether a photo may be grouped; counts what is left out, collects test-identity photos."""
        if self.train is not None and deepfashion.standard_stem(path) not in self.train:
            counts["not_in_train_list"] += 1
            return False
        if self.test_policy == "allow":
            return True
        identity = identity_of(path)
        if self.test_identities is None:
            if deepfashion.person_of(path) is not None:
                leaked.append(path)  # DeepFashion photo, and nothing says it is not a test person
                return False
            return True
        if identity in self.test_identities:
            leaked.append(path)
            return False
        return True

    def check(self, leaked: list[Path], counts: dict) -> None:
        if not leaked:
            return
        if self.test_policy == "drop":
            counts["test_identity_dropped"] += len(leaked)
            return
        listed = ", ".join(str(p) for p in leaked[:5])
        if self.test_identities is None:
            raise DataError(f"{len(leaked)} DeepFashion photo(s) but no test list, so test people could enter the "
                            f"training groups, e.g. {listed}: pass --test-list test.lst (and --train-list train.lst), "
                            "or --test-identities allow to group every photo")
        raise DataError(f"{len(leaked)} photo(s) show people of the test list and would enter training groups, e.g. "
                        f"{listed} (use the standard train.lst, --test-identities drop to leave them out, or "
                        "--test-identities allow to keep them)")


def build_groups(image_dir: str | os.PathLike, relative_to: str | os.PathLike | None = None, min_images: int = 2,
                 pose_rule: PoseRule | None = None, skip_missing_poses: bool = False,
                 split: Split | None = None) -> tuple[list[list[str]], dict]:
    """Group the images under `image_dir` (recursively) by `group_key`; groups with < min_images are dropped.

    Returns (groups, report). With a pose rule, photos without a pose image raise a DataError listing them,
    unless skip_missing_poses (then they are left out and counted in the report). `split` keeps test people out.
    """
    split = split or Split()
    split_counts = {"not_in_train_list": 0, "test_identity_dropped": 0}
    leaked: list[Path] = []
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist")
    groups: dict[str, list[Path]] = defaultdict(list)
    unnamed: list[Path] = []
    missing: list[tuple[Path, Path]] = []
    for path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        key = group_key(path.name)
        if key is None:
            unnamed.append(path)
            continue
        if not split.admit(path, split_counts, leaked):
            continue
        if pose_rule is not None:
            pose = pose_rule(path)
            if not pose.is_file():
                missing.append((path, pose))
                continue
        groups[str(path.parent / key)].append(path)
    split.check(leaked, split_counts)
    if missing and not skip_missing_poses:
        listed = "; ".join(f"{image} -> {pose}" for image, pose in missing[:5])
        raise DataError(f"{len(missing)} image(s) have no pose image by {pose_rule.describe()}, e.g. {listed} "
                        "(render them, fix the rule, or pass --skip-missing-poses)")
    base = Path(relative_to) if relative_to is not None else None
    kept = []
    for key in sorted(groups):
        paths = groups[key]
        if len(paths) >= min_images:
            kept.append([os.path.relpath(p, base) if base is not None else str(p) for p in paths])
    report = {"images": sum(len(g) for g in kept), "groups": len(kept), "small_groups_dropped": len(groups) - len(kept),
              "unnamed_skipped": len(unnamed), "missing_pose_skipped": len(missing), **split_counts}
    return kept, report


def load_groups(json_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[list[Path]]:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataError(f"group file {json_path} not found (make one with: python -m trainer.data build-groups)")
    try:
        data = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"group file {json_path} is not valid JSON ({error}); remake it with: python -m trainer.data "
                        "build-groups (or python -m trainer.prepare)") from error
    if not isinstance(data, list) or not all(isinstance(g, list) for g in data):
        raise DataError(f"{json_path}: expected a JSON list of lists of image paths")
    base = Path(root) if root is not None else json_path.parent
    groups = []
    for index, group in enumerate(data):
        paths = [base / p for p in group if str(p).lower().endswith(IMAGE_EXTENSIONS)]
        if len(paths) < 2:
            raise DataError(f"{json_path}: group {index} has {len(paths)} image(s); each group needs >= 2")
        groups.append(paths)
    if not groups:
        raise DataError(f"{json_path} holds no groups")
    return groups


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; an unreadable or truncated file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # PIL: unidentified, truncated or broken files
        raise DataError(f"image {path} could not be read ({error})") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def pick_images(count: int, generator: torch.Generator) -> list[int]:
    """Indices of CELLS photos of a group: all distinct when it has >= CELLS, else every photo once plus repeats."""
    order = torch.randperm(count, generator=generator).tolist()
    picked = order[:CELLS]
    while len(picked) < CELLS:
        picked.append(int(torch.randint(0, count, (1,), generator=generator)))
    return [picked[i] for i in torch.randperm(CELLS, generator=generator).tolist()]


@dataclass(frozen=True)
class SampleAugmentation:
    """One random crop position and one flip for a whole sample, as the authors drew them (one RNG state for all
    four cells): every cell, its pose and the reference move alike, so no grid mixes mirrored and unmirrored
    people (a mirrored garment is not the same garment) or skeleton colour codings.

    The crop position is a fraction of the free room, so photos of different sizes in one group are cropped at
    the same relative place (for same-size photos: the same pixel offset, like the authors' RandomCrop).
    """

    crop_top: float  # in [0, 1): where the crop starts within the rows (or columns) left over after the resize
    crop_left: float
    flip: bool

    @classmethod
    def draw(cls, generator: torch.Generator, flip_prob: float = 0.5) -> "SampleAugmentation":
        top, left, flip = torch.rand(3, generator=generator).tolist()
        return cls(top, left, flip < flip_prob)


def augment_pair(image: torch.Tensor, pose: torch.Tensor, height: int, width: int,
                 augmentation: SampleAugmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to cover (height, width) keeping aspect, crop and flip as `augmentation` says; the SAME for both.

    The photo and its pose are stacked into one 6-channel tensor, so one resize, one crop and one flip move them.
    """
    if image.shape[-2:] != pose.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape[-2:])} and pose {tuple(pose.shape[-2:])} must be the same size")
    both = torch.cat([image, pose], dim=0).unsqueeze(0)
    src_h, src_w = both.shape[-2:]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, math.ceil(src_h * scale - 1e-6)), max(width, math.ceil(src_w * scale - 1e-6))
    both = F.interpolate(both, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top = min(int(augmentation.crop_top * (new_h - height + 1)), new_h - height)
    left = min(int(augmentation.crop_left * (new_w - width + 1)), new_w - width)
    both = both[..., top : top + height, left : left + width]
    if augmentation.flip:
        both = both.flip(-1)
    return both[0, :3], both[0, 3:]


class GroupDataset(Dataset):
    """Samples of one group each: images/poses (4, 3, H, W) in [0, 1], roles (4,) bool (True = source), reference."""

    def __init__(self, groups: list[list[Path]], cell_height: int, cell_width: int, pose_rule: PoseRule,
                 flip_prob: float = 0.5, check_files: bool = True):
        self.groups = [[Path(p) for p in g] for g in groups]
        self.cell_height, self.cell_width = cell_height, cell_width
        self.pose_rule = pose_rule
        self.flip_prob = flip_prob
        if check_files:
            self.check_files()

    @classmethod
    def from_config(cls, data: dict) -> "GroupDataset":
        return cls(load_groups(data["groups"], data.get("root")), data["cell_height"], data["cell_width"],
                   pose_rule_from_config(data), data.get("flip_prob", 0.5), data.get("check_files", True))

    def check_files(self) -> None:
        """Every photo and every pose image must exist; the error lists the first missing ones."""
        missing = []
        for group in self.groups:
            for image in group:
                if not image.is_file():
                    missing.append(f"image {image}")
                else:
                    pose = self.pose_rule(image)
                    if not pose.is_file():
                        missing.append(f"pose {pose} (for {image})")
        if missing:
            raise DataError(f"{len(missing)} file(s) missing ({self.pose_rule.describe()}): " + "; ".join(missing[:5]))

    def __len__(self) -> int:
        return len(self.groups)

    def load_pair(self, image_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        pose_path = self.pose_rule(image_path)
        if not pose_path.is_file():
            raise DataError(f"pose image {pose_path} not found for {image_path} ({self.pose_rule.describe()})")
        image, pose = load_rgb(image_path), load_rgb(pose_path)
        if image.shape[-2:] != pose.shape[-2:]:
            (ih, iw), (ph, pw) = image.shape[-2:], pose.shape[-2:]
            if abs(ih / iw - ph / pw) > ASPECT_TOLERANCE * ih / iw:
                raise DataError(f"pose image {pose_path} is {pw}x{ph} but its photo {image_path} is {iw}x{ih}: "
                                "a pose must be rendered on the photo's frame (same aspect ratio)")
            pose = F.interpolate(pose.unsqueeze(0), size=(ih, iw), mode="bilinear", antialias=True,
                                 align_corners=False)[0].clamp(0, 1)
        return image, pose

    def sample(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        group = self.groups[index]
        images, poses = [], []
        picks = pick_images(len(group), generator)
        augmentation = SampleAugmentation.draw(generator, self.flip_prob)  # one for the whole sample
        for pick in picks:
            image, pose = self.load_pair(group[pick])
            image, pose = augment_pair(image, pose, self.cell_height, self.cell_width, augmentation)
            images.append(image)
            poses.append(pose)
        roles = random_cell_roles(generator)
        sources = [i for i, source in enumerate(roles) if source]
        reference = sources[int(torch.randint(0, len(sources), (1,), generator=generator))]
        return {
            "images": torch.stack(images),
            "poses": torch.stack(poses),
            "roles": torch.tensor(roles, dtype=torch.bool),
            "reference": torch.tensor(reference, dtype=torch.long),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # torch's global RNG is seeded per DataLoader worker (and by accelerate.set_seed in the main process)
        seed = int(torch.randint(0, 2**62, (1,)))
        return self.sample(index, torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-groups", help="write the group JSON for a folder of photos")
    build.add_argument("image_dir", type=Path)
    build.add_argument("--out", type=Path, required=True, help="group JSON to write (paths relative to its folder)")
    rule = build.add_mutually_exclusive_group()
    rule.add_argument("--pose-template", help='e.g. "{dir}/../dwpose/{stem}.png"; checks every pose exists')
    rule.add_argument("--pose-replace", nargs=2, metavar=("OLD", "NEW"), help='e.g. /image/ /dwpose/')
    build.add_argument("--min-images", type=int, default=2)
    build.add_argument("--skip-missing-poses", action="store_true", help="leave out photos without a pose image")
    build.add_argument("--train-list", type=Path, help="train.lst: only these photos are grouped")
    build.add_argument("--test-list", type=Path, help="test.lst: photos of its people never enter the groups")
    build.add_argument("--test-identities", choices=TEST_IDENTITY_POLICIES, default="refuse",
                       help="photos of test people: refuse (an error naming them; default), drop (leave out, count), "
                            "allow (group them anyway)")
    args = parser.parse_args(argv)

    rule = None
    if args.pose_template or args.pose_replace:
        rule = PoseRule(template=args.pose_template, replace=args.pose_replace)
    try:
        split = Split.from_lists(args.train_list, args.test_list, args.test_identities)
        groups, report = build_groups(args.image_dir, args.out.parent.resolve(), args.min_images, rule,
                                      args.skip_missing_poses, split)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not groups:
        print(f"error: no group with >= {args.min_images} images under {args.image_dir} ({report})", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(args.out.name + ".partial")
    temp.write_text(json.dumps(groups, indent=0))
    os.replace(temp, args.out)
    print(json.dumps({"written": str(args.out), **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

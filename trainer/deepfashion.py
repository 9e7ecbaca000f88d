"""DeepFashion In-shop as pose-transfer papers use it: standard image names, the train/test split and test pairs.

The split (`train.lst` 48,674 / `test.lst` 4,038 images, no person in both) and the test pairs
(`fasion-resize-pairs-test.csv`, 8,570 `from,to` rows) name images by a flat "standard" name made from the
In-shop path, e.g. `img_highres/MEN/Shirts_Polos/id_00001802/02_4_full.jpg` ->
`fashionMENShirts_Polosid0000180202_4full.jpg` (the category keeps its underscore, the id loses it, the view part
loses its last one). `ImageIndex` maps standard names to the files of either layout (the nested In-shop folders
or an already flat folder). Pair lists are read in three formats: PATN/PCDMs-style CSV (`from,to`), GFLA/NTED/PIDM
`test_pairs.txt` (`target,source[,source...]`: the first source is taken) and PCDMs' `test_data.json`
(`source_image`/`target_image`).
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
STANDARD = re.compile(r"^fashion(?P<gender>WOMEN|MEN)(?P<category>.+?)id(?P<person>\d{8})(?P<clothes>\d{2})_"
                      r"(?P<view>\d+)(?P<pose>[A-Za-z]+)$")
NESTED_ID = re.compile(r"^id_(\d{8})$")
GENDERS = ("MEN", "WOMEN")


class SplitError(ValueError):
    """A split or pair list that does not fit the images; the message names the file and the names."""


def standard_stem(path: str | os.PathLike) -> str:
    """Standard DeepFashion stem of an image path: nested In-shop paths are converted, other names kept as they are.

    `.../MEN/Shirts_Polos/id_00001802/02_4_full.jpg` -> `fashionMENShirts_Polosid0000180202_4full`;
    `fashionMENShirts_Polosid0000180202_4full.jpg` -> itself without extension.
    """
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-4] in GENDERS and NESTED_ID.match(parts[-2]):
        view = Path(parts[-1]).stem.split("_")
        if len(view) >= 2:
            return f"fashion{parts[-4]}{parts[-3]}{parts[-2].replace('_', '')}{view[0]}_{''.join(view[1:])}"
    return Path(path).stem


def person_of(path: str | os.PathLike) -> str | None:
    """The person id (8 digits) of a DeepFashion image (standard or nested name), else None."""
    match = STANDARD.match(standard_stem(path))
    return match.group("person") if match else None


def outfit_of(path: str | os.PathLike) -> str | None:
    """Person + clothes id of a DeepFashion image (what a training group holds), else None."""
    match = STANDARD.match(standard_stem(path))
    return f"{match.group('person')}{match.group('clothes')}" if match else None


def _names_in(path: Path) -> list[str]:
    if not path.is_file():
        raise SplitError(f"{path} not found")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(f"{path} could not be read: {error}") from error


def read_split(path: str | os.PathLike) -> list[str]:
    """Standard stems of a `train.lst` / `test.lst` (one image name per line; nested paths accepted)."""
    path = Path(path)
    names = [standard_stem(n) for n in _names_in(path) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise SplitError(f"{path} names no images (expected one image name per line, e.g. "
                         "fashionMENShirts_Polosid0000180202_4full.jpg)")
    return names


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(source stem, target stem) pairs from a CSV (`from,to`), a `*_pairs.txt` or a PCDMs-style JSON."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"pair list {path} not found")
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise SplitError(f"{path} is not valid JSON: {error}") from error
        try:
            pairs = [(e["source_image"], e["target_image"]) for e in entries]
        except (TypeError, KeyError) as error:
            raise SplitError(f"{path}: expected a list of {{'source_image', 'target_image'}} entries") from error
    else:
        rows = [row for row in csv.reader(_names_in(path)) if row]
        header = bool(rows) and [c.strip().lower() for c in rows[0][:2]] == ["from", "to"]
        short = [i + 1 for i, row in enumerate(rows) if len(row) < 2]
        if short:
            raise SplitError(f"{path}: line {short[0]} does not hold two image names separated by a comma")
        if header:
            pairs = [(row[0], row[1]) for row in rows[1:]]  # PATN/PCDMs CSV: from (source), to (target)
        else:
            pairs = [(row[1], row[0]) for row in rows]  # GFLA/NTED/PIDM: target, source[, more sources]
    if not pairs:
        raise SplitError(f"{path} holds no pairs")
    return [(standard_stem(s.strip()), standard_stem(t.strip())) for s, t in pairs]


@dataclass
class ImageIndex:
    """Image files under a folder by standard stem (nested In-shop layout or flat standard names)."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> "ImageIndex":
        root = Path(root)
        if not root.is_dir():
            raise SplitError(f"image folder {root} not found")
        index = cls(root)
        duplicates = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
            stem = standard_stem(path)
            if stem in index.files:
                duplicates.append(f"{index.files[stem]} and {path}")
            index.files[stem] = path
        if duplicates:
            raise SplitError(f"{len(duplicates)} image name(s) occur twice under {root}, e.g. {duplicates[0]}")
        return index

    def resolve(self, stems: list[str], source: str, skip_missing: bool = False) -> tuple[list[str], list[str]]:
        """(found, missing) stems; missing ones are an error naming the list unless skip_missing."""
        found = [s for s in stems if s in self.files]
        missing = [s for s in stems if s not in self.files]
        if missing and not skip_missing:
            raise SplitError(f"{source} names {len(missing)} image(s) not found under {self.root}, e.g. "
                             f"{', '.join(missing[:5])} (fix the list or the folder, or pass --skip-missing)")
        return found, missing

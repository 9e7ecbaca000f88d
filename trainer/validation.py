"""Validation sheets while training: fixed groups generated every N steps with the evaluation's sampling.

Each validation group gives one grid: its first photo (sorted) is the source, the next up to three photos are
targets (their poses conditioned, their photos the truth), laid out as the nodes lay out 1 -> N. The grids are made
by `trainer.generate` (the nodes' conditioning, `imagpose.sampling`, the same seed every time), so successive sheets
differ only by training. Sheets go to OUTPUT_DIR/validation/step-N.png (written whole, then renamed) and to the
TensorBoard tracker.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from imagpose.grid import make_layout

from . import generate
from .data import DataError, load_groups, load_rgb, pose_rule_from_config

logger = logging.getLogger("trainer")


class Validator:
    """Holds the fixed validation photos (loaded once, at start: a missing file fails then, not hours later)."""

    def __init__(self, groups: list[list[Path]], data: dict, validation: dict, output_dir: Path):
        rule = pose_rule_from_config(data)
        self.settings = generate.Sampling(steps=validation["steps"], cfg=validation["cfg"], seed=validation["seed"],
                                          cell_height=data["cell_height"], cell_width=data["cell_width"],
                                          fit=validation["fit"])
        self.every = validation["every_steps"]
        self.folder = output_dir / "validation"
        self.items = []
        for group in groups:
            photos = sorted(group)[: 1 + validation["targets"]]
            loaded = []
            for photo in photos:
                pose = rule(photo)
                if not pose.is_file():
                    raise DataError(f"validation: pose image {pose} not found for {photo} ({rule.describe()})")
                loaded.append((load_rgb(photo)[None], load_rgb(pose)[None]))
            self.items.append(loaded)

    @classmethod
    def from_config(cls, config: dict) -> "Validator | None":
        validation, data = config["validation"], config["data"]
        if not validation["every_steps"]:
            return None
        source = validation["groups"] or data["groups"]
        groups = load_groups(source, data.get("root") if not validation["groups"] else None)
        return cls(groups[: validation["count"]], data, validation, Path(config["output_dir"]))

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def __call__(self, model, vae, encoder, downscale: int, use_cva: bool, step: int, trackers=()) -> Path:
        """One sheet: per target a row source | target pose | generated | ground truth."""
        was_training = model.training
        model.eval()
        rows = []
        try:
            for loaded in self.items:
                (source, source_pose), targets = loaded[0], loaded[1:]
                layout = make_layout(1, len(targets), self.settings.cell_height, self.settings.cell_width)
                condition = generate.grid_conditioning(model, vae, encoder, layout, source, source_pose,
                                                       torch.cat([pose for _, pose in targets]), self.settings, downscale)
                grid = generate.sample_grids(model, vae, [condition], self.settings, use_cva=use_cva)
                for cell, (photo, pose) in zip(generate.target_cells(grid, layout)[0], targets):
                    generated = generate.uncrop(cell, tuple(photo.shape[-2:]), self.settings)
                    rows.append([generate.to_pil(x) for x in (source[0], pose[0], generated, photo[0])])
        finally:
            model.train(was_training)
        sheet = generate.compose_sheet(rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step:07d}.png"
        temp = path.with_name(f".{path.name}.partial")
        sheet.save(temp, format="PNG")
        os.replace(temp, path)
        for tracker in trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation": np.asarray(sheet)}, step=step, dataformats="HWC")
        logger.info("validation sheet %s", path)
        return path

"""How many training samples mix mirrored and unmirrored cells (the authors: none; one flip per sample).

    python benchmarks/augmentation_flips.py [--samples 200]

Draws samples from trainer.data.GroupDataset over one group of left-to-right ramp photos of different sizes
(trainer.testing.write_ramp_group) and reads each cell's orientation from its pixels. Prints the count.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from trainer.data import GroupDataset, PoseRule
    from trainer.testing import POSE_TEMPLATE, mirrored_cells, write_ramp_group

    with tempfile.TemporaryDirectory() as folder:
        dataset = GroupDataset([write_ramp_group(Path(folder))], 64, 64, PoseRule(template=POSE_TEMPLATE))
        mixed = 0
        for seed in range(args.samples):
            cells = mirrored_cells(dataset.sample(0, torch.Generator().manual_seed(seed))["images"])
            mixed += len(set(cells)) > 1
    print(f"samples mixing mirrored and unmirrored cells: {mixed} of {args.samples} ({100 * mixed / args.samples:.1f}%)")


if __name__ == "__main__":
    main()

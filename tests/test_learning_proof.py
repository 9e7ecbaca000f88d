"""The trainer learns, and appearance travels from the source cells into the target cell (CI version of
benchmarks/learning_proof.py: a synthetic data set, a fitted VAE, stage 1 + end-to-end through the trainer's entry
point, held-out identities sampled with the pure sampler).

Each assertion compares measured numbers with each other; none is a stored result, and each fails for a model
that has not learnt what it checks (an untrained model, one that ignores its sources, one that memorised colours).
"""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import learning_proof  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return learning_proof.run(tmp_path_factory.mktemp("learning-proof"), dict(learning_proof.PRESETS["ci"]))


def test_trainer_ran_every_stage_through_its_entry_point(report):
    settings = report["settings"]
    assert [s["stage"] for s in report["stages"]] == ["stage1", settings["second_stage"]]
    assert [s["steps"] for s in report["stages"]] == [settings["stage1_steps"], settings["second_steps"]]
    for stage in report["stages"]:
        assert stage["loss_last_tenth"] < stage["loss_first_tenth"] or stage["stage"] != "stage1"


def test_trained_model_beats_the_untrained_one(report):
    trained, untrained = report["results"]["trained"], report["results"]["untrained"]
    assert trained["mae"] < 0.7 * untrained["mae"]
    assert trained["ssim"] > untrained["ssim"] + 0.15


def test_appearance_comes_from_the_sources(report):
    """With blank (white) source photos, their poses kept, the figure's shape stays but its colours are lost."""
    trained, blanked = report["results"]["trained"], report["results"]["blanked"]
    assert trained["colour_error"] < 0.75 * blanked["colour_error"]
    assert trained["mae"] < 0.9 * blanked["mae"]
    assert trained["ssim"] > blanked["ssim"] + 0.02


def test_swapped_source_changes_the_output_towards_the_other_identity(report):
    """Same target pose, another identity's source: the figure takes the new identity's colours."""
    swap = report["results"]["swap"]
    assert swap["colour_error"] < 0.75 * swap["colour_error_vs_original"]
    assert swap["mae"] < swap["mae_vs_original_truth"]


def test_vae_ceiling_is_above_the_model(report):
    """Sanity of the measure: the fitted VAE reconstructs the truth better than any generated figure matches it."""
    ceiling, trained = report["results"]["vae_ceiling"], report["results"]["trained"]
    assert ceiling["mae"] < trained["mae"] and ceiling["ssim"] > trained["ssim"]

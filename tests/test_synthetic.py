"""The learning proof's parts: the synthetic people data set and the small VAE fitted on it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import fit_vae, synthetic
from trainer.data import load_groups

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(root, identities=3, poses=3, size=64, seed=0)
    return root


def test_groups_are_identities_and_the_trainer_reads_them(dataset):
    groups = load_groups(dataset / "groups.json")
    identity_of = {p["image"]: p["identity"] for p in json.loads((dataset / "meta.json").read_text())["photos"]}
    assert sorted(len(g) for g in groups) == [3, 3, 3]
    for group in groups:
        assert all(p.is_file() for p in group)
        assert len({identity_of[p.relative_to(dataset).as_posix()] for p in group}) == 1, group


def test_pose_images_are_the_pose_nodes_rendering_and_figures_wear_their_identity(dataset):
    from imagpose.pose import Person, PoseFrame

    for photo in json.loads((dataset / "meta.json").read_text())["photos"][:4]:
        frame = PoseFrame(64, 64, [Person(body=np.array(photo["keypoints"], dtype=np.float64))])
        stored = np.asarray(Image.open(dataset / photo["image"].replace("image/", "dwpose/")))
        assert np.array_equal(stored, synthetic.render_pose(frame))
        figure = np.asarray(Image.open(dataset / photo["image"])).astype(np.float64) / 255
        labels = synthetic.part_labels(frame)
        inner = synthetic.inner_mask(labels)
        palette = synthetic.Identity({k: tuple(v) for k, v in photo["colours"].items()}).palette()
        error = np.abs(figure[inner] - palette[labels[inner] - 1]).max(axis=1)
        assert np.median(error) < 0.01 and error.mean() < 0.08  # flat colours; soft edges between parts
        assert (figure[labels == 0] > 0.9).mean() > 0.95  # white around the figure


def test_held_out_identities_differ_from_training_ones(dataset):
    rng = np.random.default_rng(10_000)
    held_out = {tuple(synthetic.random_identity(rng).colours["shirt"]) for _ in range(20)}
    trained = {tuple(p["colours"]["shirt"]) for p in json.loads((dataset / "meta.json").read_text())["photos"]}
    assert not held_out & trained


def test_fitted_vae_reconstructs_better_than_its_start_and_has_unit_latents(dataset):
    images = fit_vae.load_images(dataset / "image")
    vae, report = fit_vae.fit(images, steps=80, batch=4, log_every=0)
    assert abs(report["latent_std"] - 1.0) < 0.1
    with torch.no_grad():
        latent = vae.encode(images[:2] * 2 - 1).latent_dist.mean
        assert latent.shape == (2, 4, 8, 8)
        decoded = (vae.decode(latent).sample + 1) / 2
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    untrained = AutoencoderKL(**fit_vae.VAE_CONFIG).eval()
    with torch.no_grad():
        baseline = (untrained.decode(untrained.encode(images[:2] * 2 - 1).latent_dist.mean).sample + 1) / 2
    fitted_error = (decoded - images[:2]).abs().mean()
    assert fitted_error < 0.6 * (baseline - images[:2]).abs().mean(), fitted_error

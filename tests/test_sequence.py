"""Any number of target poses: ILC Pack's grid sequence, chunks, keypoint input, undistorted sources, and sampling
through ComfyUI's stock KSampler (in-process), batched and chunked."""
import pytest
import torch

from harness import openpose_frame, sequence_pose
from harness.imagpose_sampling import load_test_models, run_node
from imagpose.imaging import fit_to_cell

CELL = 64


def rand_images(n, h=CELL, w=CELL, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def poses(n, h=CELL, w=CELL, seed=1):
    return (rand_images(n, h, w, seed) > 0.85).float()


@pytest.fixture(scope="module")
def setup(comfy_nodes, tiny_models):
    vae, model, bundle, encoder = load_test_models(comfy_nodes)
    source = rand_images(1, 96, 64, seed=7)
    positive, negative = run_node(comfy_nodes, "IMAGPoseFLCEncode", encoder, bundle, vae, source, 0, False,
                                  CELL, CELL, "pad")
    return comfy_nodes, vae, model, bundle, encoder, source, positive, negative


def pack(setup, targets, **kwargs):
    nodes, vae, _, _, _, source, positive, negative = setup
    kwargs.setdefault("source_poses", poses(1, seed=2))
    return run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, source, targets, CELL, CELL, "pad", "auto",
                    **kwargs)


def attached(conditioning):
    options = conditioning[0][1]
    return options["concat_mask"], options["concat_latent_image"], options["model_conds"]["imagpose_pose"].cond


def test_twelve_targets_make_four_grids_in_one_batch(setup):
    positives, negatives, latents, layout, preview = pack(setup, poses(12))
    assert len(positives) == len(negatives) == len(latents) == 1
    assert [len(g.target_cells) for g in layout.grids] == [3, 3, 3, 3] and layout.chunks == (4,)
    assert latents[0]["samples"].shape == (4, 4, 16, 16) and latents[0]["batch_index"] == [0, 1, 2, 3]
    flags, masked, pose_grid = attached(positives[0])
    assert flags.shape == (4, 1, 16, 16) and masked.shape == (4, 4, 16, 16) and pose_grid.shape == (4, 3, 128, 128)
    assert torch.equal(attached(negatives[0])[2], pose_grid)
    assert preview.shape == (4, 128, 256, 3)
    single = pack(setup, poses(3))[2]
    assert len(single) == 1 and "batch_index" not in single[0], "one grid: the latent as it always was"


def test_chunks_carry_the_same_grids_as_one_batch(setup):
    """Chunks of at most K grids: the same per-grid flag maps, masked latents and pose grids, in the same order,
    and batch_index numbering the grids across chunks (so the noise of grid g does not depend on chunking)."""
    targets = poses(7)
    one = pack(setup, targets)
    chunked = pack(setup, targets, batching="chunks", grids_per_batch=2)
    assert chunked[3].chunks == (2, 1) and len(chunked[0]) == 2
    assert [lat["batch_index"] for lat in chunked[2]] == [[0, 1], [2]]
    for whole, parts in zip(attached(one[0][0]), zip(*(attached(c) for c in chunked[0]))):
        assert torch.allclose(whole, torch.cat(parts), atol=1e-5)
    assert torch.equal(one[4], chunked[4])
    # the last grid holds the seventh target, its spare cells repeating the source
    assert chunked[3].grids[-1].cell_sources == (0, 0, 0, None)
    assert attached(chunked[0][1])[0][0, 0].tolist() == [[1.0] * 8 + [1.0] * 8] * 8 + [[1.0] * 8 + [0.0] * 8] * 8


def test_keypoint_frames_equal_their_rendering(setup, comfy_nodes):
    """target_keypoints draws each frame as Pose Render does (body and hands): the same pose grids."""
    frames = [openpose_frame(sequence_pose(i, 5), 80, 120) for i in range(5)]
    rendered = run_node(comfy_nodes, "IMAGPosePoseRender", frames, 0, 0, True, False)[0]
    from_keypoints = pack(setup, None, target_keypoints=frames)
    from_images = pack(setup, rendered)
    assert torch.equal(attached(from_keypoints[0][0])[2], attached(from_images[0][0])[2])
    assert from_keypoints[3].num_targets == 5


def test_keypoint_frames_retargeted_onto_the_source_are_accepted(setup, comfy_nodes):
    """Frames from another person's canvas, through Pose Retarget, land on the source's canvas and pack as poses."""
    frames = [openpose_frame(sequence_pose(i, 4), 120, 80) for i in range(4)]  # another canvas than the source's
    source_frame = openpose_frame(sequence_pose(0, 4), 64, 96)
    retargeted, _ = run_node(comfy_nodes, "IMAGPosePoseRetarget", frames, [source_frame], "neck", True, False)
    assert {(f["canvas_width"], f["canvas_height"]) for f in retargeted} == {(64, 96)}
    packed = pack(setup, None, target_keypoints=retargeted)
    assert packed[3].num_targets == 4 and len(packed[3].grids) == 2


@pytest.mark.parametrize("case,match", [
    ("empty", "input 'target_keypoints': expected at least one pose; got an empty POSE_KEYPOINT list"),
    ("no_person", "input 'target_keypoints': expected a person in every frame .*; got no person in frame\\(s\\) 2 of 4"),
    ("canvases", "input 'target_keypoints': expected frames on one canvas size.*; got frame 0 on 80x120 and frame 3 "
                 "on 120x80"),
])
def test_bad_keypoint_sequences_are_named(setup, case, match):
    frames = [openpose_frame(sequence_pose(i, 4), 80, 120) for i in range(4)]
    if case == "empty":
        frames = []
    elif case == "no_person":
        frames[2] = {**frames[2], "people": []}
    else:
        frames[3] = openpose_frame(sequence_pose(3, 4), 120, 80)
    with pytest.raises(ValueError, match=f"^IMAGPose ILC Pack: {match}"):
        pack(setup, None, target_keypoints=frames)


def test_extra_sources_are_fitted_on_their_own(setup):
    """A wide photo on source_2 enters its cell letterboxed, as it would alone; Batch Images would stretch it."""
    nodes, vae, _, bundle, encoder, source, _, _ = setup
    wide = rand_images(1, 40, 120, seed=9)
    positive, negative = run_node(nodes, "IMAGPoseFLCEncode", encoder, bundle, vae, source, 1, False, CELL, CELL,
                                  "pad", source_2=wide)
    alone = run_node(nodes, "IMAGPoseFLCEncode", encoder, bundle, vae, wide, 0, False, CELL, CELL, "pad")[0]
    assert torch.equal(positive[0][0], alone[0][0])
    packed = run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, source, poses(2), CELL, CELL, "pad", "auto",
                      source_poses=poses(2, 96, 64, seed=3), source_2=wide)
    assert packed[3].grids[0].cell_sources == (0, 1, None, None)
    preview = packed[4][0]  # masked half, top-right cell = source 2, letterboxed with white
    expected = fit_to_cell(wide.movedim(-1, 1), CELL, CELL, "pad", 1.0)[0].movedim(0, -1)
    inside = slice(CELL * 3 // 8, CELL * 5 // 8)  # away from the cell's label
    assert torch.allclose(preview[inside, CELL:][:, inside], expected[inside, inside], atol=1 / 255)


def test_source_poses_stretched_by_batch_images_are_restored_with_extra_sources(setup):
    """With photos of several sizes, a pose batch (stretched by Batch Images to the first photo's size) goes back to
    each photo's own size before the cell fit, so pose and photo line up in the cell."""
    nodes, vae, _, _, _, source, positive, negative = setup
    wide = rand_images(1, 40, 120, seed=9)
    wide_pose = torch.zeros(1, 40, 120, 3)
    wide_pose[:, 10:30, 50:70] = 1.0  # a square mark in the middle of the wide photo's pose
    stretched = torch.nn.functional.interpolate(wide_pose.movedim(-1, 1), size=(96, 64)).movedim(1, -1)
    packed = run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, source, poses(1), CELL, CELL, "pad", "auto",
                      source_poses=torch.cat([poses(1, 96, 64, seed=3), stretched]), source_2=wide)
    pose_cell = attached(packed[0][0])[2][0, :, :CELL, CELL:]  # top right: source 2
    expected = fit_to_cell(wide_pose.movedim(-1, 1), CELL, CELL, "pad", 0.0)[0]
    assert (pose_cell - expected).abs().mean() < 0.02
    assert (pose_cell > 0.5).sum().item() == pytest.approx((expected > 0.5).sum().item(), rel=0.3)


def sample(setup, packed, seed):
    """What ComfyUI does with ILC Pack's list outputs: the stock KSampler once per chunk. Returns the sampled grid
    latents of all chunks in order (decoding them is the same per grid either way)."""
    nodes, _, model = setup[:3]
    positives, negatives, latents, _, _ = packed
    sampled = [nodes.KSampler().sample(model, seed, 2, 2.0, "euler", "simple", positive, negative, latent)[0]
               for positive, negative, latent in zip(positives, negatives, latents)]
    return torch.cat([latent["samples"] for latent in sampled])


def test_sampling_is_reproducible_and_chunking_does_not_change_it(setup):
    """Also shows that ComfyUI lines every grid's flag map, masked latent and pose grid up with its latent batch entry
    (for cond and uncond, cfg 2): the two grids differ in roles and poses, and each sampled alone (chunks of 1)
    gives what it gives in the batch."""
    targets = poses(4)  # two grids: 3 targets, then 1
    one_batch = sample(setup, pack(setup, targets), seed=11)
    assert one_batch.shape == (2, 4, 16, 16) and torch.isfinite(one_batch).all()
    again = sample(setup, pack(setup, targets), seed=11)
    assert torch.equal(one_batch, again)
    chunked = sample(setup, pack(setup, targets, batching="chunks", grids_per_batch=1), seed=11)
    difference, span = (chunked - one_batch).abs().max().item(), one_batch.abs().max().item()
    print(f"one batch vs chunks of 1 grid: max abs latent difference {difference:.2e} (latents span {span:.2f})")
    # float32 rounding differs between batch sizes and grows over the sampling steps (6.5e-4 of the span with two
    # threads, less with one); a grid lined up with another grid's conditioning would differ by the whole span
    assert difference < 2e-3 * span
    other_seed = sample(setup, pack(setup, targets), seed=12)
    assert (other_seed - one_batch).abs().max() > 1e-2
    # the grids differ from each other: each got its own noise
    assert (one_batch[0] - one_batch[1]).abs().max() > 1e-2

"""Grid packing: round trips, cell order and flag polarity against hand-built expectations."""
import pytest
import torch

from imagpose import grid
from imagpose.imaging import fit_to_cell


def test_pack_split_round_trip_is_exact():
    cells = [torch.randn(2, 3, 5, 7) for _ in range(4)]
    packed = grid.pack_grid(cells)
    assert packed.shape == (2, 3, 10, 14)
    for original, back in zip(cells, grid.split_grid(packed)):
        assert torch.equal(original, back)
    assert torch.equal(grid.frames_to_cells(grid.cells_to_frames(packed)), packed)


def test_cell_order_is_tl_tr_bl_br():
    cells = [torch.full((1, 1, 2, 2), float(i)) for i in range(4)]
    packed = grid.pack_grid(cells)[0, 0]
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=torch.float32)
    assert torch.equal(packed, expected)


@pytest.mark.parametrize("sources,targets,cell_sources,target_cells", [
    (1, 3, (0, None, None, None), (1, 2, 3)),
    (1, 1, (0, 0, 0, None), (3,)),
    (2, 2, (0, 1, None, None), (2, 3)),
    (3, 1, (0, 1, 2, None), (3,)),
    (2, 1, (0, 1, 0, None), (3,)),
    (1, 2, (0, 0, None, None), (2, 3)),
])
def test_layouts_fill_spare_cells_with_sources(sources, targets, cell_sources, target_cells):
    layout = grid.make_layout(sources, targets, 64, 64)
    assert layout.cell_sources == cell_sources
    assert layout.target_cells == target_cells


def test_flag_is_one_on_sources_zero_on_targets():
    layout = grid.make_layout(1, 3, 64, 64)
    flag = grid.flag_map(layout, 1, 2, 3)[0, 0]
    expected = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(flag, expected)
    layout = grid.make_layout(3, 1, 64, 64)
    assert grid.flag_map(layout, 1, 1, 1)[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_masked_and_pose_cells_follow_layout():
    layout = grid.make_layout(2, 2, 4, 4)
    sources = torch.stack([torch.full((3, 4, 4), v) for v in (0.3, 0.6)])
    source_poses = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.2)])
    target_poses = torch.stack([torch.full((3, 4, 4), v) for v in (0.8, 0.9)])
    images, poses = grid.layout_cells(layout, sources, source_poses, target_poses)
    assert [c.mean().item() for c in images] == pytest.approx([0.3, 0.6, 0.0, 0.0])
    assert [c.mean().item() for c in poses] == pytest.approx([0.1, 0.2, 0.8, 0.9])


def test_assemble_blacks_out_targets_per_grid_layout():
    """Training passes the ground truth in target cells; assemble must hide it, whatever each grid's layout."""
    layouts = [grid.make_layout(1, 3, 8, 8), grid.make_layout(3, 1, 8, 8)]
    cells = torch.rand(2, 4, 3, 8, 8) + 0.1
    poses = torch.rand(2, 4, 3, 8, 8)
    masked, pose_grid, flags = grid.assemble(layouts, cells, poses, latent_downscale=4)
    assert masked.shape == pose_grid.shape == (2, 3, 16, 16) and flags.shape == (2, 1, 4, 4)
    for b, layout in enumerate(layouts):
        shown = [c.abs().sum().item() > 0 for c in grid.split_grid(masked[b : b + 1])]
        assert shown == [s is not None for s in layout.cell_sources]
        assert [c.mean().item() for c in grid.split_grid(flags[b : b + 1])] == list(layout.flags)
        assert torch.equal(pose_grid[b], grid.pack_grid(list(poses[b : b + 1].unbind(1)))[0])


@pytest.mark.parametrize("sources,targets", [(0, 1), (1, 0), (4, 1), (1, 4), (2, 3), (3, 3)])
def test_impossible_layouts_are_refused(sources, targets):
    with pytest.raises(ValueError):
        grid.make_layout(sources, targets, 64, 64)


def test_fit_keeps_aspect_and_never_stretches():
    image = torch.zeros(1, 3, 100, 50)
    image[..., :, 20:30] = 1.0  # a vertical bar in the middle
    padded = fit_to_cell(image, 64, 64, "pad", pad_value=0.5)
    assert padded.shape == (1, 3, 64, 64)
    assert torch.allclose(padded[..., :, :15], torch.tensor(0.5))  # letterbox left and right
    assert padded[..., 32, 32].mean() > 0.9  # the bar is still in the centre, not stretched wide
    assert padded[..., 32, 24].mean() < 0.1
    cropped = fit_to_cell(image, 64, 64, "crop")
    assert cropped.shape == (1, 3, 64, 64)
    assert cropped[..., :, 25:39].mean() > 0.9 and cropped[..., :, :20].mean() < 0.1
    with pytest.raises(ValueError):
        fit_to_cell(image, 64, 64, "stretch")


@pytest.mark.parametrize("sources,targets,per_grid", [
    (1, 1, [1]), (1, 3, [3]), (1, 4, [3, 1]), (1, 12, [3, 3, 3, 3]), (1, 13, [3, 3, 3, 3, 1]),
    (2, 5, [2, 2, 1]), (3, 3, [1, 1, 1]), (1, 64, [3] * 21 + [1]),
])
def test_plan_grids_fills_each_grid_with_all_sources_and_the_next_targets(sources, targets, per_grid):
    layouts = grid.plan_grids(sources, targets, 8, 8)
    assert [len(g.target_cells) for g in layouts] == per_grid
    for layout in layouts:
        assert layout == grid.make_layout(sources, len(layout.target_cells), 8, 8)
        assert set(s for s in layout.cell_sources if s is not None) == set(range(sources))
    sequence = grid.SequenceLayout(layouts, (len(layouts),))
    assert sequence.num_targets == targets
    assert sequence.first_targets() == tuple(sum(per_grid[:i]) for i in range(len(per_grid)))


@pytest.mark.parametrize("sources,targets", [(0, 1), (4, 1), (1, 0), (1, grid.MAX_TARGET_POSES + 1)])
def test_plan_grids_refuses_impossible_counts(sources, targets):
    with pytest.raises(ValueError):
        grid.plan_grids(sources, targets, 8, 8)


def test_chunks_cover_every_grid_in_order():
    assert grid.chunk_sizes(7, 3) == (3, 3, 1)
    assert grid.chunk_sizes(2, 8) == (2,)
    layout = grid.SequenceLayout(grid.plan_grids(1, 20, 8, 8), grid.chunk_sizes(7, 3))
    assert layout.chunk_bounds() == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError):
        grid.SequenceLayout(grid.plan_grids(1, 20, 8, 8), (3, 3))


def test_sequence_cells_then_unpack_give_every_target_once_in_pose_order():
    """Target pose j is drawn in exactly one cell, and unpacking the grids returns cell contents in pose order."""
    sources, targets = 2, 7
    layouts = grid.plan_grids(sources, targets, 4, 4)
    source_cells = torch.stack([torch.full((3, 4, 4), -1.0 - s) for s in range(sources)])
    target_poses = torch.stack([torch.full((3, 4, 4), float(j)) for j in range(targets)])
    images, poses = grid.sequence_cells(layouts, source_cells, source_cells, target_poses)
    assert images.shape == poses.shape == (len(layouts), 4, 3, 4, 4)
    pose_grids = grid.pack_grid(list(poses.unbind(1)))
    sequence = grid.SequenceLayout(layouts, (1,) * len(layouts))
    unpacked = grid.unpack_cells(sequence, pose_grids)
    assert [c.mean().item() for c in unpacked] == list(range(targets))
    everything = grid.unpack_cells(sequence, pose_grids, "all")
    assert everything.shape[0] == 4 * len(layouts)
    assert sorted(c.mean().item() for c in everything if c.mean() < 0) == sorted(
        -1.0 - s for layout in layouts for s in layout.cell_sources if s is not None)
    with pytest.raises(ValueError):
        grid.sequence_cells(layouts, source_cells, source_cells, target_poses[:-1])


def test_preview_labels_roles_and_frames_targets():
    from imagpose.preview import cell_labels, packed_preview

    layouts = grid.plan_grids(1, 4, 64, 64)
    sequence = grid.SequenceLayout(layouts, (2,))
    assert cell_labels(sequence) == [["S1", "T1", "T2", "T3"], ["S1", "S1", "S1", "T4"]]
    masked = torch.zeros(2, 3, 128, 128)
    masked[:, :, :64, :64] = 0.5  # the source cell
    poses = torch.zeros(2, 3, 128, 128)
    preview = packed_preview(sequence, masked, poses)
    assert preview.shape == (2, 3, 128, 256)
    # a target cell's border is white (framed), a source cell's border is not; the cell middle is left as packed
    assert preview[0, :, 64, 64 + 1].min() > 0.9 and preview[0, :, 64, 256 - 2].min() > 0.9
    assert preview[0, :, 63, 1].max() < 0.9
    assert torch.allclose(preview[0, :, 32, 32], torch.tensor(0.5), atol=0.01)
    assert preview[0, :, 100, 100].max() < 0.01 and preview[0, :, 100, 228].max() < 0.01


def test_preview_grids_are_shrunk_to_at_most_512_px_with_whole_cells():
    from imagpose.preview import shrink

    big = shrink(torch.rand(2, 3, 1536, 1024))
    assert big.shape == (2, 3, 512, 342)  # 1536x1024 -> 512 long, the short side even so both cells stay whole
    small = torch.rand(1, 3, 128, 256)
    assert shrink(small) is small

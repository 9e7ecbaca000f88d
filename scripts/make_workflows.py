"""Write the shipped workflows (workflows/*.json, UI format 0.4) from one description per scenario.

    python scripts/make_workflows.py            # starts a ComfyUI server, reads /object_info, writes the files
    python scripts/make_workflows.py --check    # exit 1 if the files on disk differ from what would be written

Widget values are ordered by the live /object_info (so the files match the nodes' schemas exactly); the
e2e tests convert the written files back through /object_info and run them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import ComfyServer, make_base_dir, remove_base_dir  # noqa: E402
from harness.workflow import TITLE_HEIGHT, input_order, is_widget, widget_values_layout  # noqa: E402

WORKFLOWS = REPO / "workflows"
PACK_CNR_ID = "imagpose"
PACK_VERSION = "0.1.0"
COMFY_VERSION = "0.3.75"

# Browse Templates titles a pack's workflows with their file names, so the names are titles. ComfyUI 0.3.75's
# frontend lists them in the server's order (the folder's, by default) or sorted by title: the numbers put the
# main use first when sorted, and keep the order the same everywhere.
MAIN_WORKFLOW = "IMAGPose 1 - one photo to three poses"
POSE_FROM_PHOTOS = "IMAGPose 5 - poses taken from photos of other people"
POSE_SEQUENCE = "IMAGPose 6 - one photo through a pose sequence"
SEQUENCE_FRAMES = 12  # frames of imagpose_pose_sequence.png
GRIDS_PER_BATCH = 4

# what the user is expected to have (documented in the Notes and the README)
CHECKPOINT = "imagpose.safetensors"
IMAGE_ENCODER = "dinov2-base"
VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
CELL_W, CELL_H = 512, 768

MODEL_NOTE = f"""MODEL FILES (see the README of the IMAGPose pack)

models/imagpose/
  {CHECKPOINT}  - this pack's single-file checkpoint
      (make it from the authors' files: python -m imagpose.convert <folder> models/imagpose/{CHECKPOINT})
  or a folder with the authors' files (denoising_unet-N.pth, pose_guider-N.pth, patch-N.pth,
      optional motion_module-N.pth): pick the folder in "checkpoint".
  {IMAGE_ENCODER}/  - facebook/dinov2-base in transformers format (config.json + model.safetensors);
      may also live in models/clip_vision/.

models/vae/
  {VAE}  - stabilityai/sd-vae-ft-mse (any file of that VAE).

Pose images: DWPose/OpenPose-style skeletons on black. Make them from photos with
IMAGPose Pose Extract (see the workflow "{POSE_FROM_PHOTOS}")."""

SETTINGS_NOTE = f"""RECOMMENDED SETTINGS

KSampler: steps 20 (the paper's), cfg 2.0, sampler ddim (or euler), scheduler simple, denoise 1.0. At 20
steps "simple" is exactly the authors' DDIM (trailing) timesteps; for other step counts use SamplerCustom
with "IMAGPose Trailing Sigmas". The model runs v-prediction with zero terminal SNR; the loader sets it up.

Cell size: width {CELL_W}, height {CELL_H} (what IMAGPose was trained on; multiples of 64). Use the SAME width,
height and fit on "IMAGPose FLC Encode" and "IMAGPose ILC Pack". The sampled grid is 2x2 cells.

Any number of target poses: a 2x2 grid holds the 1-3 sources and 4 - sources targets; more poses make more
grids (each with all sources), sampled as one batch, or with ILC Pack's batching = chunks in batches of
grids_per_batch grids (memory stays bounded). Grid Unpack gives one image per target pose, in pose order.
ILC Pack's preview output shows what was packed (S = source, T = target pose number) before sampling.
ILC Pack finds the source photos' poses itself (MediaPipe, or DWPose if its ONNX files are installed)
unless you connect source_poses.

Several source photos: connect them to source_images, source_2 and source_3 (on FLC Encode and ILC Pack):
each is fitted to the cell on its own, never stretched (Batch Images would stretch the second photo to the
first one's size)."""


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.next_id = 1

    def node(self, node_type: str, widgets: dict | None = None, title: str | None = None, size=None) -> dict:
        """A node of that type with its widget values (by name; defaults from /object_info); placed later."""
        info = self.info[node_type]
        widgets = dict(widgets or {})
        values = []
        for name, extra in widget_values_layout(info):
            spec = dict(input_order(info))[name]
            if name in widgets:
                value = widgets.pop(name)
            else:
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if "default" in options:
                    value = options["default"]
                elif isinstance(spec[0], list) and spec[0]:
                    value = spec[0][0]
                elif options.get("options"):
                    value = options["options"][0]
                else:
                    raise KeyError(f"{node_type}.{name} needs a value")
            values.append(value)
            if extra:
                values.append("fixed" if spec[0] == "INT" else "image")
        if widgets:
            raise KeyError(f"{node_type} has no widgets {sorted(widgets)}")
        sockets = [
            {"name": name, "type": spec[0], "link": None}
            for name, spec in input_order(info) if not is_widget(spec)
        ]
        outputs = [
            {"name": name, "type": kind, "links": [], "slot_index": i}
            for i, (name, kind) in enumerate(zip(info["output_name"], info["output"]))
        ]
        is_core = not info.get("python_module", "").startswith("custom_nodes")
        rows = max(len(sockets), len(outputs)) + len(values)
        node = {
            "id": self.next_id,
            "type": node_type,
            "pos": [0, 0],
            "size": list(size or [320, 46 + 24 * rows]),  # taller than the frontend's own minimum
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": sockets,
            "outputs": outputs,
            "properties": {
                "Node name for S&R": node_type,
                "cnr_id": "comfy-core" if is_core else PACK_CNR_ID,
                "ver": COMFY_VERSION if is_core else PACK_VERSION,
            },
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.next_id += 1
        self.nodes.append(node)
        return node

    def note(self, text: str, size=(420, 300), title: str = "Note") -> dict:
        node = {
            "id": self.next_id, "type": "Note", "pos": [0, 0], "size": list(size), "flags": {},
            "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "title": title,
            "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653",
        }
        self.next_id += 1
        self.nodes.append(node)
        return node

    def link(self, src: dict, src_output: str | int, dst: dict, dst_input: str) -> None:
        """Connect an output (by index, or by name when names are unique) to a named input."""
        if isinstance(src_output, int):
            out_index = src_output
        else:
            matches = [i for i, o in enumerate(src["outputs"]) if o["name"] == src_output]
            if len(matches) != 1:
                raise KeyError(f"{src['type']}: output name {src_output!r} matches {len(matches)} outputs")
            out_index = matches[0]
        in_index = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == dst_input)
        kind = src["outputs"][out_index]["type"]
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], out_index, dst["id"], in_index, kind])
        src["outputs"][out_index]["links"].append(link_id)
        dst["inputs"][in_index]["link"] = link_id

    def to_json(self, name: str) -> dict:
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"imagpose/{name}")),
            "revision": 0,
            "last_node_id": self.next_id - 1,
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}, "frontendVersion": "1.32.9"},
            "version": 0.4,
        }


def batch_images(g: Graph, loads: list[dict]) -> tuple[dict, str, list[dict]]:
    """Chain ImageBatch nodes over several LoadImage nodes; returns (node, output name, the ImageBatch nodes)."""
    current, out, batches = loads[0], "IMAGE", []
    for load in loads[1:]:
        batch = g.node("ImageBatch", size=(260, 66))
        g.link(current, out, batch, "image1")
        g.link(load, "IMAGE", batch, "image2")
        current, out = batch, "IMAGE"
        batches.append(batch)
    return current, out, batches


GAP_X, GAP_Y = 50, 30


def place_columns(columns: list[list[dict]], x: int = 0, y: int = 0) -> int:
    """Stack each column's nodes top to bottom (title bars included, with a gap), columns left to right;
    returns the lowest edge. Nothing overlaps, which tests/test_workflow_layout.py checks on the files."""
    bottom = y
    for column in columns:
        top = y
        for node in column:
            node["pos"] = [x, top + TITLE_HEIGHT]
            top += TITLE_HEIGHT + node["size"][1] + GAP_Y
        bottom = max(bottom, top - GAP_Y)
        x += max(n["size"][0] for n in column) + GAP_X
    return bottom


def place_notes(g: Graph, y: int) -> None:
    """Put the Note nodes in a row under the graph."""
    x = 0
    for note in (n for n in g.nodes if n["type"] == "Note"):
        note["pos"] = [x, y + 80 + TITLE_HEIGHT]
        x += note["size"][0] + GAP_X


def pipeline(g: Graph, sources: list[tuple[dict, str]], targets: tuple[dict, str], slug: str,
             source_poses: tuple[dict, str] | None = None, ilc_widgets: dict | None = None) -> list[list[dict]]:
    """Loaders, FLC Encode, ILC Pack (+ a Preview Image of what it packed), KSampler, VAE Decode, Grid Unpack, Save
    Image; returns their columns (Grid Unpack is the last node of the third). Sources go to source_images, source_2
    and source_3 on both FLC Encode and ILC Pack: each is fitted to the cell on its own, never stretched."""
    model = g.node("IMAGPoseModelLoader", {"checkpoint": CHECKPOINT, "motion_module": "none",
                                           "pose_guider": "auto", "patch_embed": "auto"})
    encoder = g.node("IMAGPoseImageEncoderLoader", {"image_encoder": IMAGE_ENCODER})
    vae = g.node("VAELoader", {"vae_name": VAE})
    flc = g.node("IMAGPoseFLCEncode", {"reference_index": 0, "use_all_sources": False,
                                       "width": CELL_W, "height": CELL_H, "fit": "pad"})
    ilc = g.node("IMAGPoseILCPack", {"width": CELL_W, "height": CELL_H, "fit": "pad", "source_pose_detector": "auto",
                                     "batching": "one_batch", "grids_per_batch": 8, **(ilc_widgets or {})})
    preview = g.node("PreviewImage", title="What ILC Pack packed", size=(340, 300))
    sampler = g.node("KSampler", {"seed": 42, "steps": 20, "cfg": 2.0, "sampler_name": "ddim",
                                  "scheduler": "simple", "denoise": 1.0})
    decode = g.node("VAEDecode")
    unpack = g.node("IMAGPoseGridUnpack", {"which": "targets"})
    save = g.node("SaveImage", {"filename_prefix": f"IMAGPose/{slug}"}, size=(420, 480))
    # outputs by index (the public API order): loader model 0, imagpose 1; FLC positive 0, negative 1;
    # ILC positive 0, negative 1, latent 2, layout 3, preview 4; unpack images 0
    g.link(encoder, 0, flc, "image_encoder")
    g.link(model, 1, flc, "imagpose")
    g.link(vae, 0, flc, "vae")
    for (node, output), socket in zip(sources, ("source_images", "source_2", "source_3")):
        g.link(node, output, flc, socket)
        g.link(node, output, ilc, socket)
    g.link(flc, 0, ilc, "positive")
    g.link(flc, 1, ilc, "negative")
    g.link(vae, 0, ilc, "vae")
    g.link(targets[0], targets[1], ilc, "target_poses")
    if source_poses is not None:
        g.link(source_poses[0], source_poses[1], ilc, "source_poses")
    g.link(ilc, 4, preview, "images")
    g.link(model, 0, sampler, "model")
    g.link(ilc, 0, sampler, "positive")
    g.link(ilc, 1, sampler, "negative")
    g.link(ilc, 2, sampler, "latent_image")
    g.link(sampler, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    g.link(decode, 0, unpack, "images")
    g.link(ilc, 3, unpack, "layout")
    g.link(unpack, 0, save, "images")
    return [[model, encoder, vae], [flc, ilc, preview], [sampler, decode, unpack], [save]]


def scenario(info: dict, slug: str, n_sources: int, n_targets: int, what: str) -> Graph:
    g = Graph(info)
    g.note(MODEL_NOTE, (620, 430), "Model files")
    g.note(SETTINGS_NOTE, (700, 330), "Settings")
    source_files = ["imagpose_source.png"] if n_sources == 1 else [f"imagpose_source_{i + 1}.png" for i in range(n_sources)]
    pose_files = [f"imagpose_pose_{i + 1}.png" for i in range(n_targets)]
    g.note(
        f"{what}\n\nInputs (ComfyUI's input folder): sources {', '.join(source_files)}; target poses "
        f"{', '.join(pose_files)}. Replace them with your own photos and pose images.\n\nThe Save Image node "
        f"gets {n_targets} image(s), in the order of the target poses.",
        (560, 200), "This workflow")
    loads = [g.node("LoadImage", {"image": f}, title=f"Source photo {i + 1}", size=(270, 330))
             for i, f in enumerate(source_files)]
    poses = [g.node("LoadImage", {"image": f}, title=f"Target pose {i + 1}", size=(270, 330))
             for i, f in enumerate(pose_files)]
    *targets, target_batches = batch_images(g, poses)
    columns = pipeline(g, [(load, "IMAGE") for load in loads], tuple(targets), slug)
    place_notes(g, place_columns([loads, poses + target_batches, *columns]))
    return g


def pose_from_photos(info: dict, slug: str) -> Graph:
    g = Graph(info)
    g.note(MODEL_NOTE, (620, 430), "Model files")
    g.note(SETTINGS_NOTE, (700, 330), "Settings")
    g.note(
        "Target poses taken from photos of other people: IMAGPose Pose Extract finds each person's pose "
        "(DWPose if its ONNX files are in models/imagpose/dwpose, else MediaPipe), IMAGPose Pose Retarget gives "
        "the poses the source person's proportions and place, and ILC Pack gets the source's own extracted "
        "pose as source_poses.\n\nInputs: imagpose_source.png (the person), imagpose_pose_photo_1.png and "
        "imagpose_pose_photo_2.png (people in the wanted poses).",
        (560, 230), "This workflow")
    source = g.node("LoadImage", {"image": "imagpose_source.png"}, title="Source photo", size=(270, 330))
    photo1 = g.node("LoadImage", {"image": "imagpose_pose_photo_1.png"}, title="Pose photo 1", size=(270, 330))
    photo2 = g.node("LoadImage", {"image": "imagpose_pose_photo_2.png"}, title="Pose photo 2", size=(270, 330))
    photos, out, batches = batch_images(g, [photo1, photo2])
    extract_widgets = {"detector": "auto", "include_hands": True, "include_face": False, "person": "largest",
                       "person_index": 0, "on_no_person": "error"}
    src_pose = g.node("IMAGPosePoseExtract", extract_widgets, title="Source pose", size=(300, 250))
    tgt_pose = g.node("IMAGPosePoseExtract", extract_widgets, title="Target poses (from photos)", size=(300, 250))
    retarget = g.node("IMAGPosePoseRetarget", {"anchor": "neck", "include_hands": True, "include_face": False})
    g.link(source, "IMAGE", src_pose, "images")
    g.link(photos, out, tgt_pose, "images")
    # PoseExtract: pose_images 0, keypoints 1; PoseRetarget: keypoints 0, pose_images 1
    g.link(tgt_pose, 1, retarget, "target_keypoints")
    g.link(src_pose, 1, retarget, "source_keypoints")
    columns = pipeline(g, [(source, "IMAGE")], (retarget, 1), slug, source_poses=(src_pose, 0))
    place_notes(g, place_columns([[source, photo1, photo2, *batches], [src_pose, tgt_pose, retarget], *columns]))
    return g


def pose_sequence(info: dict, slug: str) -> Graph:
    g = Graph(info)
    g.note(MODEL_NOTE, (620, 430), "Model files")
    g.note(SETTINGS_NOTE, (700, 330), "Settings")
    g.note(
        f"One photo -> the person through a sequence of {SEQUENCE_FRAMES} poses (a dance, a turnaround, catalogue "
        f"shots). Every 2x2 grid holds the source and the next 3 poses; all grids share the source and its FLC, so "
        f"the person stays the same. ILC Pack samples them in chunks of {GRIDS_PER_BATCH} grids (batching = chunks, "
        f"grids_per_batch = {GRIDS_PER_BATCH}): ComfyUI runs the KSampler once per chunk, so memory stays bounded; "
        f"set batching = one_batch (and grids_per_batch >= the number of grids) to sample all at once, which is "
        f"faster when memory allows. Seeds: grid g gets the g-th noise of the KSampler's seed (batch_index), so the "
        f"result does not depend on the chunking.\n\nInputs: imagpose_source.png (the person) and "
        f"imagpose_pose_sequence.png, an animated PNG with one pose per frame: Load Image turns its frames into one "
        f"IMAGE batch (an animated WEBP or GIF works too, or a video loader's frames through IMAGPose Pose Extract). "
        f"POSE_KEYPOINT frames (e.g. DWPose Estimator on a video, optionally through IMAGPose Pose Retarget) go to "
        f"ILC Pack's target_keypoints instead of target_poses.\n\nOut: Save Image writes one image per pose, in "
        f"order; Save Animated WEBP writes them as an animation.",
        (620, 330), "This workflow")
    source = g.node("LoadImage", {"image": "imagpose_source.png"}, title="Source photo", size=(270, 330))
    poses = g.node("LoadImage", {"image": "imagpose_pose_sequence.png"},
                   title=f"Target poses ({SEQUENCE_FRAMES} frames)", size=(270, 330))
    columns = pipeline(g, [(source, "IMAGE")], (poses, "IMAGE"), slug,
                       ilc_widgets={"batching": "chunks", "grids_per_batch": GRIDS_PER_BATCH})
    animation = g.node("SaveAnimatedWEBP", {"filename_prefix": f"IMAGPose/{slug}", "fps": 6.0, "lossless": False,
                                            "quality": 90, "method": "default"}, size=(420, 480))
    g.link(columns[2][-1], 0, animation, "images")
    columns[3].append(animation)
    place_notes(g, place_columns([[source], [poses], *columns]))
    return g


# name -> (output prefix, builder); see the names at the top
SCENARIOS = {
    MAIN_WORKFLOW: ("1_source_to_3_targets", lambda info, slug: scenario(
        info, slug, 1, 3, "One photo of a person -> the person in three new poses, generated together in one 2x2 grid "
                          "(the main IMAGPose use).")),
    "IMAGPose 2 - one photo to one pose": ("1_source_to_1_target", lambda info, slug: scenario(
        info, slug, 1, 1, "One photo of a person -> the person in one new pose.")),
    "IMAGPose 3 - two photos to two poses": ("2_sources_to_2_targets", lambda info, slug: scenario(
        info, slug, 2, 2, "Two photos of the same person -> the person in two new poses.")),
    "IMAGPose 4 - three photos to one pose": ("3_sources_to_1_target", lambda info, slug: scenario(
        info, slug, 3, 1, "Three photos of the same person -> the person in one new pose.")),
    POSE_FROM_PHOTOS: ("pose_from_photos", pose_from_photos),
    POSE_SEQUENCE: ("pose_sequence", pose_sequence),
}


def build_all(object_info: dict) -> dict[str, dict]:
    out = {}
    for name, (slug, make) in SCENARIOS.items():
        needed = {"IMAGPosePoseExtract"} if name == POSE_FROM_PHOTOS else set()
        if needed - set(object_info):
            print(f"skipping {name}: nodes {sorted(needed - set(object_info))} are not loaded", file=sys.stderr)
            continue
        out[name] = make(object_info, slug).to_json(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = parser.parse_args()
    base = make_base_dir(tempfile.mkdtemp(prefix="imagpose-make-workflows-"))
    try:
        with ComfyServer(base) as server:
            info = server.client.object_info()
    finally:
        remove_base_dir(base)
    missing = [n for n in ("IMAGPoseModelLoader", "IMAGPoseILCPack") if n not in info]
    if missing:
        print(f"the IMAGPose nodes are not loaded ({missing}); see the server log", file=sys.stderr)
        return 1
    different = []
    for name, workflow in build_all(info).items():
        path = WORKFLOWS / f"{name}.json"
        text = json.dumps(workflow, indent=2) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                different.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if different:
        print(f"out of date: {different} (run python scripts/make_workflows.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

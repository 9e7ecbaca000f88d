"""Convert ComfyUI UI-format workflows (version 0.4, what the editor saves) to API prompts.

Only ComfyUI's JavaScript frontend does this conversion in ComfyUI itself. This converter is driven by a live
``GET /object_info`` so that the prompt a test runs is exactly the shipped workflow file:

- widget values are matched to the node's widget inputs in ``input_order`` (required then optional);
- an INT widget with ``control_after_generate`` (or named seed/noise_seed) carries one extra value
  ("fixed"/"randomize"/...) in ``widgets_values``; a combo with ``image_upload`` carries one extra value
  (the upload button's "image");
- a widget input that is connected by a link takes the link, not the value;
- links are ``[id, src_node, src_slot, dst_node, dst_slot, type]``;
- Note / MarkdownNote nodes are dropped, Reroute nodes are followed, muted nodes (mode 2) are dropped.
  PrimitiveNode and bypassed nodes (mode 4) are not supported and raise an error.

The conversion is strict: a widgets_values list that is too short or too long, an unknown node type or a
required input without a link raises WorkflowError, so a stale workflow file fails loudly. With
``saved_before_new_widgets=True`` it reads a file saved by an older version of the nodes as the frontend does:
widgets added since (at the end) are left out of the prompt, so the node's defaults apply.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote"}
SEED_NAMES = {"seed", "noise_seed"}


class WorkflowError(ValueError):
    pass


def load_workflow(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _input_spec(info: dict, name: str):
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


def input_order(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node type's required then optional inputs, in declared order."""
    order = info.get("input_order")
    names: list[str] = []
    for section in ("required", "optional"):
        if order and section in order:
            names.extend(order[section])
        else:
            names.extend(info["input"].get(section, {}).keys())
    return [(n, _input_spec(info, n)) for n in names if _input_spec(info, n) is not None]


def is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def extra_widget_values(name: str, spec) -> int:
    """How many extra values the frontend stores after this widget's own value."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind == "INT" and (options.get("control_after_generate") or name in SEED_NAMES):
        return 1
    if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
        return 1
    return 0


def widget_names(info: dict) -> list[str]:
    return [name for name, spec in input_order(info) if is_widget(spec)]


def widget_values_layout(info: dict) -> list[tuple[str, int]]:
    """[(widget name, number of extra values after it)] in widgets_values order."""
    return [(n, extra_widget_values(n, s)) for n, s in input_order(info) if is_widget(s)]


def ui_to_api(workflow: dict, object_info: dict, saved_before_new_widgets: bool = False) -> dict:
    """Convert a UI-format workflow into an API prompt ``{node_id: {"class_type", "inputs", "_meta"}}``."""
    nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # some frontends save links as objects
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
        links[link[0]] = link

    def resolve(link_id, seen=()):
        """Follow a link (through Reroute nodes) to [source node id, output slot]."""
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is not in the workflow's links")
        _, src, src_slot, *_ = links[link_id]
        src_node = nodes.get(str(src))
        if src_node is None:
            raise WorkflowError(f"link {link_id} starts at missing node {src}")
        if src_node["type"] == "Reroute":
            if src in seen:
                raise WorkflowError("Reroute loop")
            upstream = (src_node.get("inputs") or [{}])[0].get("link")
            if upstream is None:
                raise WorkflowError(f"Reroute node {src} has no input")
            return resolve(upstream, seen + (src,))
        if src_node["type"] == "PrimitiveNode":
            raise WorkflowError(f"PrimitiveNode {src} is not supported by this converter")
        if src_node.get("mode", 0) in (2, 4):
            raise WorkflowError(f"node {src} ({src_node['type']}) is muted/bypassed but feeds node inputs")
        return [str(src), src_slot]

    prompt: dict = {}
    for node_id, node in nodes.items():
        node_type = node["type"]
        if node_type in VIRTUAL_NODES or node_type == "Reroute":
            continue
        mode = node.get("mode", 0)
        if mode == 2:
            continue
        if mode == 4:
            raise WorkflowError(f"node {node_id} ({node_type}) is bypassed; bypass is not supported")
        if node_type == "PrimitiveNode":
            raise WorkflowError(f"PrimitiveNode {node_id} is not supported by this converter")
        info = object_info.get(node_type)
        if info is None:
            raise WorkflowError(
                f"node {node_id} has type {node_type!r}, which the server does not know "
                "(missing from /object_info: is the custom node pack loaded?)"
            )

        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise WorkflowError(f"node {node_id} ({node_type}): dict widgets_values are not supported")
        pos = 0
        for name, extra in widget_values_layout(info):
            if pos >= len(values) and saved_before_new_widgets:
                break
            if pos >= len(values):
                raise WorkflowError(
                    f"node {node_id} ({node_type}): widgets_values has {len(values)} values, "
                    f"too few for widgets {widget_names(info)}"
                )
            inputs[name] = values[pos]
            pos += 1 + extra
        if pos != len(values):
            raise WorkflowError(
                f"node {node_id} ({node_type}): widgets_values {values} do not match the widgets "
                f"{widget_names(info)} (expected {pos} values, got {len(values)})"
            )

        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            name = slot.get("widget", {}).get("name") or slot["name"]
            if _input_spec(info, name) is None:
                raise WorkflowError(f"node {node_id} ({node_type}) has a link into unknown input {name!r}")
            inputs[name] = resolve(link_id)

        for name, spec in input_order(info):
            if name in info["input"].get("required", {}) and name not in inputs:
                raise WorkflowError(f"node {node_id} ({node_type}): required input {name!r} is not connected")

        prompt[node_id] = {
            "class_type": node_type,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name") or node_type},
        }
    # drop links from nodes that were dropped (muted) is an error above; check all sources exist
    for node_id, entry in prompt.items():
        for name, value in entry["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                raise WorkflowError(f"node {node_id} input {name!r} comes from node {value[0]}, which is not in the prompt")
    return prompt


# -- editing API prompts ------------------------------------------------------------------------------

def nodes_of_type(prompt: dict, class_type: str) -> list[str]:
    return sorted((nid for nid, n in prompt.items() if n["class_type"] == class_type), key=_node_sort_key)


def _node_sort_key(node_id: str):
    return (0, int(node_id)) if str(node_id).isdigit() else (1, str(node_id))


def set_inputs(prompt: dict, class_type: str, *, require: bool = True, **values) -> list[str]:
    """Set widget values on every node of ``class_type``; returns their ids."""
    ids = nodes_of_type(prompt, class_type)
    if require and not ids:
        raise WorkflowError(f"no {class_type} node in the prompt")
    for nid in ids:
        for key, value in values.items():
            if key not in prompt[nid]["inputs"] and require:
                raise WorkflowError(f"{class_type} node {nid} has no input {key!r}")
            prompt[nid]["inputs"][key] = value
    return ids


def clone(prompt: dict) -> dict:
    return copy.deepcopy(prompt)


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar this far above its pos


def node_rectangles(workflow: dict) -> list[tuple[int, list[float]]]:
    """(id, [x, y, width, height]) of every node of a UI workflow as the canvas shows it, title bar included."""
    return [(n["id"], [n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["size"][0], n["size"][1] + TITLE_HEIGHT])
            for n in workflow["nodes"]]


def overlapping(rects: list[tuple[int, list[float]]]) -> list[tuple]:
    """Pairs of (id, [x, y, width, height]) rectangles whose insides intersect (touching edges do not count)."""
    pairs = []
    for i, (id_a, a) in enumerate(rects):
        for id_b, b in rects[i + 1:]:
            if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]:
                pairs.append(((id_a, a), (id_b, b)))
    return pairs


def set_run_settings(prompt: dict, *, checkpoint: str, image_encoder: str, vae: str, width: int, height: int,
                     steps: int, prefix: str) -> dict:
    """Point a shipped workflow's prompt at the given model files, cell size, KSampler steps and output prefix."""
    set_inputs(prompt, "IMAGPoseModelLoader", checkpoint=checkpoint, motion_module="none", pose_guider="auto",
               patch_embed="auto")
    set_inputs(prompt, "IMAGPoseImageEncoderLoader", image_encoder=image_encoder)
    set_inputs(prompt, "VAELoader", vae_name=vae)
    set_inputs(prompt, "IMAGPoseFLCEncode", width=width, height=height)
    set_inputs(prompt, "IMAGPoseILCPack", width=width, height=height)
    set_inputs(prompt, "KSampler", steps=steps)
    set_inputs(prompt, "SaveImage", filename_prefix=prefix)
    set_inputs(prompt, "SaveAnimatedWEBP", require=False, filename_prefix=prefix)
    return prompt

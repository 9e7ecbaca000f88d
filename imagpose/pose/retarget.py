"""Retarget a pose taken from someone else onto the source person's body.

The output keeps the target's joint angles (every bone keeps its direction) and takes the source's
bone lengths, so the skeleton has the source's proportions; it is then placed on the source canvas
at the source's position (anchor). Hands and face follow their wrist and nose, scaled by the ratio of
the source's body size to the target's.
"""
from __future__ import annotations



import numpy as np

from .errors import NoPersonFound
from .keypoints import Person, PoseFrame

# Bones of the OpenPose-18 tree rooted at the neck (1), parents before children.
BONES = (
    (1, 0), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (0, 14), (14, 16), (0, 15), (15, 17),
)
# Left/right counterparts, used when the source lacks one side of a bone.
MIRROR = {2: 5, 3: 6, 4: 7, 5: 2, 6: 3, 7: 4, 8: 11, 9: 12, 10: 13, 11: 8, 12: 9, 13: 10, 14: 15, 15: 14,
          16: 17, 17: 16, 0: 0, 1: 1}
ANCHORS = ("neck", "hips", "center", "feet")


def _present(p: Person, i: int) -> bool:
    return bool(p.body[i, 2] > 0)


def _length(p: Person, a: int, b: int) -> float | None:
    if _present(p, a) and _present(p, b):
        return float(np.linalg.norm(p.body[b, :2] - p.body[a, :2]))
    return None


def _body_scale(source: Person, target: Person) -> float:
    """Ratio of source to target size over the bones both have (torso-heavy, robust to one odd limb)."""
    num = den = 0.0
    for a, b in BONES:
        ls, lt = _length(source, a, b), _length(target, a, b)
        if ls is not None and lt is not None and lt > 1e-6:
            num += ls
            den += lt
    if den > 0:
        return num / den
    sb, tb = source.bbox(), target.bbox()
    if sb is not None and tb is not None:
        s = max(sb[3] - sb[1], sb[2] - sb[0])
        t = max(tb[3] - tb[1], tb[2] - tb[0])
        if t > 1e-6 and s > 1e-6:
            return s / t
    return 1.0


def _source_length(source: Person, target: Person, a: int, b: int, scale: float) -> float:
    length = _length(source, a, b)
    if length is None:
        length = _length(source, MIRROR[a], MIRROR[b])
    if length is None:
        length = (_length(target, a, b) or 0.0) * scale
    return length


def _root(p: Person) -> np.ndarray | None:
    if _present(p, 1):
        return p.body[1, :2].copy()
    if _present(p, 2) and _present(p, 5):
        return (p.body[2, :2] + p.body[5, :2]) / 2
    return None


def _anchor_point(p: Person, anchor: str) -> np.ndarray | None:
    box = p.bbox()
    if box is None:
        return None
    if anchor == "neck":
        return _root(p)
    if anchor == "hips":
        hips = [p.body[i, :2] for i in (8, 11) if _present(p, i)]
        return np.mean(hips, axis=0) if hips else None
    if anchor == "center":
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    if anchor == "feet":
        feet = [i for i in (10, 13) if _present(p, i)]
        if not feet:
            return None
        return np.array([(box[0] + box[2]) / 2, max(p.body[i, 1] for i in feet)])
    raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")


def retarget_person(target: Person, source: Person, anchor: str = "neck") -> Person:
    """Target's pose with the source's bone lengths, placed at the source's anchor point."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    if not source.visible.any():
        raise ValueError("the source pose has no visible body keypoints")
    if not target.visible.any():
        raise ValueError("the target pose has no visible body keypoints")
    scale = _body_scale(source, target)
    out = target.copy()
    new = out.body
    # Lay the bones out from the root, in tree order; keypoints not connected to a placed parent are
    # placed relative to the root by scaling.
    t_root = _root(target)
    if t_root is None:
        t_root = target.body[target.visible, :2].mean(axis=0)
    placed = np.zeros(len(new), dtype=bool)
    if _present(target, 1):
        new[1, :2] = t_root
        placed[1] = True
    for a, b in BONES:
        if not _present(target, b):
            continue
        if placed[a] and _present(target, a):
            direction = target.body[b, :2] - target.body[a, :2]
            norm = float(np.linalg.norm(direction))
            unit = direction / norm if norm > 1e-9 else np.zeros(2)
            new[b, :2] = new[a, :2] + unit * _source_length(source, target, a, b, scale)
        else:
            new[b, :2] = t_root + (target.body[b, :2] - t_root) * scale
        placed[b] = True
    # Hands follow their wrists, the face its nose, scaled like the body.
    for hand, wrist in ((out.left_hand, 7), (out.right_hand, 4)):
        if hand is None:
            continue
        keep = hand[:, 2] > 0
        if not keep.any():
            continue
        if _present(target, wrist):
            ref_old, ref_new = target.body[wrist, :2], new[wrist, :2]
        else:
            ref_old = hand[keep, :2][0].copy()
            ref_new = t_root + (ref_old - t_root) * scale
        hand[keep, :2] = ref_new + (hand[keep, :2] - ref_old) * scale
    if out.face is not None:
        keep = out.face[:, 2] > 0
        ref_old = target.body[0, :2] if _present(target, 0) else t_root
        ref_new = new[0, :2] if _present(target, 0) else t_root
        out.face[keep, :2] = ref_new + (out.face[keep, :2] - ref_old) * scale
    # Place: move so the anchor lands on the source's anchor (falling back to the neck, then centre).
    for name in (anchor, "neck", "center"):
        src_pt, out_pt = _anchor_point(source, name), _anchor_point(out, name)
        if src_pt is not None and out_pt is not None:
            shift = src_pt - out_pt
            return out.transformed(lambda a: a + shift)
    return out


def retarget_frame(target: PoseFrame, source: PoseFrame, anchor: str = "neck") -> PoseFrame:
    """Retarget the target frame's people onto the source frame's (pairs by order; a single source person
    is used for every target person). The result lives on the source's canvas."""
    if not source.people:
        raise ValueError("the source pose has no person")
    if not target.people:
        raise ValueError("the target pose has no person")
    # The target's own canvas does not matter: sizes come from the source's bones and the position
    # from the source's anchor (rescaling the target to the source canvas would bend its angles).
    tgt = target
    people = []
    for i, person in enumerate(tgt.people):
        src = source.people[i] if i < len(source.people) else source.people[0]
        people.append(retarget_person(person, src, anchor))
    return PoseFrame(source.width, source.height, people)


def retarget_frames(targets, sources, anchor: str = "neck") -> list[PoseFrame]:
    """Batch version: len(sources) may be 1 (used for every target) or equal to len(targets)."""
    targets, sources = list(targets), list(sources)
    if not targets:
        return []
    if len(sources) not in (1, len(targets)):
        raise ValueError(f"got {len(targets)} target poses but {len(sources)} source poses; give 1 source or one per target")
    for role, frames in (("target", targets), ("source", sources)):
        for index, frame in enumerate(frames):
            if not any(p.visible.any() for p in frame.people):
                raise NoPersonFound(f"{role} pose {index} has no person with visible body keypoints", index, role)
    return [retarget_frame(t, sources[i if len(sources) > 1 else 0], anchor) for i, t in enumerate(targets)]

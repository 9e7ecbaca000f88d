"""Errors raised by imagpose.pose."""


class PoseBackendUnavailable(RuntimeError):
    """A pose backend cannot run here: a package is not installed or model files are missing."""


class NoPersonFound(ValueError):
    """No person was found; ``index`` is the image's (or pose frame's) position in its batch, ``role`` says which
    batch ("image" for photos, "source"/"target" for the poses of a retargeting)."""

    def __init__(self, message: str, index: int = 0, role: str = "image"):
        super().__init__(message)
        self.index = index
        self.role = role


class PersonIndexOutOfRange(ValueError):
    """`by_index` asked for a person the image does not have."""


class KeypointOutOfRange(ValueError):
    """A keypoint so far outside the image that it cannot be drawn (OpenCV takes 32-bit pixel coordinates)."""

"""Errors raised by imagpose.pose."""


class PoseBackendUnavailable(RuntimeError):
    """A pose backend cannot run here: a package is not installed or model files are missing."""


class NoPersonFound(ValueError):
    """No person was found in an image; ``index`` is the image's position in the batch."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.index = index

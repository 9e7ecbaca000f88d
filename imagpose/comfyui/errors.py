"""Turn library errors into messages that name the node, so the ComfyUI UI says where to look."""
from __future__ import annotations

from contextlib import contextmanager

from ..checkpoints import CheckpointError
from ..image_encoder import ImageEncoderError
from .conditioning import InputError


class IMAGPoseNodeError(ValueError):
    pass


@contextmanager
def node_errors(node: str, widget: str | None = None):
    try:
        yield
    except (InputError, ImageEncoderError) as error:
        raise IMAGPoseNodeError(f"{node}: {error}") from error
    except CheckpointError as error:
        where = f"{widget}: " if widget else ""
        raise IMAGPoseNodeError(f"{node}: {where}{error}") from error
    except FileNotFoundError as error:
        message = str(error)
        raise IMAGPoseNodeError(message if message.startswith(node) else f"{node}: {message}") from error

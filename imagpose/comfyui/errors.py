"""Errors the nodes show: the glue raises `InputError` (input, expected, got); one boundary adds the node's name."""
from __future__ import annotations

from contextlib import contextmanager


class InputError(ValueError):
    """A node input that cannot be used. The glue raises it without the node's name."""

    def __init__(self, input_name: str, expected: str, got: str):
        super().__init__(input_name, expected, got)
        self.input_name, self.expected, self.got = input_name, expected, got

    def __str__(self) -> str:
        return f"input '{self.input_name}': expected {self.expected}; got {self.got}"


class IMAGPoseNodeError(ValueError):
    """What ComfyUI shows the user: '<node>: input '<name>': expected ...; got ...'."""


def node_name(node) -> str:
    """A node class's display name (the name users see on the canvas); the schema is built only on this error path."""
    schema = getattr(node, "SCHEMA", None) or node.define_schema()
    return schema.display_name or schema.node_id


@contextmanager
def node_boundary(node):
    """Every InputError leaving a node's execute is raised again with the node's name in front."""
    try:
        yield
    except InputError as error:
        raise IMAGPoseNodeError(f"{node_name(node)}: {error}") from error


def check_widgets(node, **values) -> None:
    """The schema's own limits (combo options, min/max) for the widget values a node's validate_inputs takes:
    ComfyUI skips its checks for the inputs validate_inputs names (and never checks V3 combos)."""
    declared = {item.id: item for item in node.define_schema().inputs}
    for name, value in values.items():
        item = declared[name]
        options = getattr(item, "options", None)
        if options is not None and value not in options:
            raise InputError(name, f"one of {', '.join(map(str, options))}", repr(value))
        low, high = getattr(item, "min", None), getattr(item, "max", None)
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputError(name, f"a value from {low} to {high}", str(value))


def validation_result(node, check) -> bool | str:
    """validate_inputs' answer: True, or the message of the InputError `check()` raised, with the node's name."""
    try:
        check()
    except InputError as error:
        return f"{node_name(node)}: {error}"
    return True

"""Errors the nodes show, and the one boundary every IMAGPose node passes through.

The glue raises `InputError` (input, expected, got) without the node's name. `imagpose_node` (a class decorator on
every node) makes each `execute` run inside `node_boundary`, which puts the node's name in front, after checking the
widget values against the schema; and it gives the node a `validate_inputs` that checks the same at queue time.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import comfy.model_management

from ..checkpoints import has_unsafe_advice, without_unsafe_advice

MESSAGE_LIMIT = 600  # characters of a library message shown (a 5000-character file name must not flood the UI)
LISTED_OPTIONS = 20  # longer option lists (model files) are counted, as ComfyUI does for its own combos


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


def shown(text: object) -> str:
    """A library message as users may see it: never torch's advice to load unsafely, never a flood."""
    text = without_unsafe_advice(str(text)).strip()
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + " [...]"


def _chain(error: BaseException) -> BaseException | None:
    """The cause to chain (ComfyUI logs the whole chain): none when any link carries torch's unsafe advice."""
    link, seen = error, set()
    while link is not None and id(link) not in seen:
        if has_unsafe_advice(str(link)):
            return None
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return error


def is_out_of_memory(error: BaseException) -> bool:
    """A failed CPU allocation: numpy's MemoryError, torch's DefaultCPUAllocator RuntimeError."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@contextmanager
def node_boundary(node):
    """Every error leaving a node's execute names the node. InputErrors become '<node>: input ...'; ComfyUI's
    interruption and GPU out-of-memory pass unchanged (ComfyUI handles both: it stops, or frees its models and says
    so); a failed CPU allocation says so; anything else is reported as unexpected, with its type and message."""
    try:
        yield
    except InputError as error:
        raise IMAGPoseNodeError(f"{node_name(node)}: {InputError(error.input_name, error.expected, shown(error.got))}") \
            from _chain(error)
    except (IMAGPoseNodeError, comfy.model_management.InterruptProcessingException, comfy.model_management.OOM_EXCEPTION):
        raise
    except Exception as error:  # noqa: BLE001 - every other error gets the node's name too
        if is_out_of_memory(error):
            raise IMAGPoseNodeError(f"{node_name(node)}: ran out of memory ({shown(error)}); use smaller images or "
                                    "cells, or fewer at a time") from _chain(error)
        raise IMAGPoseNodeError(f"{node_name(node)}: unexpected {type(error).__name__} (an input the node does not "
                                f"check yet; please report it): {shown(error)}") from _chain(error)


def _options_text(options: list) -> str:
    if len(options) <= LISTED_OPTIONS:
        return f"one of {', '.join(map(str, options))}"
    return f"one of the {len(options)} choices the node lists (e.g. {', '.join(map(str, options[:3]))}, ...)"


def check_widgets(node, values: dict, own_combos: frozenset = frozenset()) -> None:
    """The schema's own limits (combo options, min/max) for the widget values given. ComfyUI 0.3.75 never checks V3
    combos, skips min/max for the inputs a validate_inputs names, and checks nothing for values linked from other
    nodes; values still unknown (None: linked, seen at queue time) are skipped, and so are the lists of `own_combos`."""
    declared = {item.id: item for item in node.define_schema().inputs}
    for name, value in values.items():
        item = declared.get(name)
        if item is None or value is None:
            continue
        options = getattr(item, "options", None)
        if options is not None and name not in own_combos and value not in options:
            raise InputError(name, _options_text(list(options)), shown(repr(value)))
        low, high = getattr(item, "min", None), getattr(item, "max", None)
        if low is None and high is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(name, f"a number from {low} to {high}", shown(repr(value)))
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputError(name, f"a value from {low} to {high}", str(value))


def check_values(node, values: dict) -> None:
    """The node's own `check_inputs` (relations between inputs, files that must exist), then the schema's limits.
    A combo that check_inputs takes is the node's to judge, not checked against its list: the loaders list files of
    their kind, but take any file that exists and say what is wrong with one of another kind (more than 'not in
    the list')."""
    own = getattr(node, "check_inputs", None)
    taken = frozenset(inspect.signature(own).parameters) if own is not None else frozenset()
    if own is not None:
        own(**{name: values.get(name) for name in taken})
    check_widgets(node, values, own_combos=taken)


def validation_result(node, check) -> bool | str:
    """validate_inputs' answer: True, or the message of the InputError `check()` raised, with the node's name."""
    try:
        check()
    except InputError as error:
        return f"{node_name(node)}: {InputError(error.input_name, error.expected, shown(error.got))}"
    return True


def _validated_names(node) -> list[str]:
    """What validate_inputs takes: every combo (ComfyUI checks none) and what the node's check_inputs needs. Only
    these, because ComfyUI attaches a failed validate_inputs message to every input the function names."""
    combos = [item.id for item in node.define_schema().inputs if getattr(item, "options", None) is not None]
    own = getattr(node, "check_inputs", None)
    extra = [name for name in inspect.signature(own).parameters if name not in combos] if own is not None else []
    return combos + extra


def value_sets(node, values: dict) -> list[dict]:
    """The values to check: as given, or for a node that takes its inputs as lists (is_input_list, where ComfyUI
    passes lists to execute and validate_inputs alike) each position of the lists, as ComfyUI would map them."""
    if not getattr(node.define_schema(), "is_input_list", False):
        return [values]
    length = max((len(v) for v in values.values() if isinstance(v, list)), default=1)
    return [{name: (value[min(i, len(value) - 1)] if value else None) if isinstance(value, list) else value
             for name, value in values.items()} for i in range(length)]


def imagpose_node(node):
    """Class decorator for every IMAGPose node: `execute` runs inside `node_boundary` after `check_values` (values
    linked from other nodes are seen only then), and `validate_inputs` runs `check_values` when the prompt is queued.

    A node may define `check_inputs(cls, <input>=None, ...)`, raising InputError; at queue time linked inputs are None.
    """
    execute = node.__dict__["execute"].__func__
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def guarded_execute(cls, *args, **kwargs):
        with node_boundary(cls):
            values = dict(signature.bind(cls, *args, **kwargs).arguments)
            values.pop(next(iter(signature.parameters)))
            for each in value_sets(cls, values):
                check_values(cls, each)
            return execute(cls, *args, **kwargs)

    def validate_inputs(cls, **values) -> bool | str:
        return validation_result(cls, lambda: [check_values(cls, each) for each in value_sets(cls, values)])

    # ComfyUI reads the inputs to pass from the signature (inspect.getfullargspec honours __signature__)
    names = _validated_names(node)
    validate_inputs.__signature__ = inspect.Signature(
        [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in names])
    node.execute = classmethod(guarded_execute)
    if names:
        node.validate_inputs = classmethod(validate_inputs)
    return node

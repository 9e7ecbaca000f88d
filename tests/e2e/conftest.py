"""Fixtures for end-to-end tests against a real ComfyUI server.

One server for the whole test session (starting one costs ~10 s on 2 cores): a temporary base directory with
this repository linked into custom_nodes/, the random-weight test models linked into models/, real photos
and drawn poses in input/. The server is stopped at the end of the session whatever happens; a failing test
that used it gets the tail of the server log in its report.
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from harness import (
    ComfyServer,
    ensure_test_models,
    link_models,
    make_base_dir,
    write_inputs,
)
from harness.env import prepare_inprocess_comfyui

# pytest imports the repository's root __init__.py (the pack) as a package: ComfyUI must be importable and
# set to the CPU before that happens.
prepare_inprocess_comfyui()

TIMINGS: dict[str, float] = {}
MEASUREMENTS: dict[str, str] = {}


@pytest.fixture(scope="session")
def test_models():
    """Models root with imagpose/ and vae/ (random weights, cached per version of imagpose/*.py)."""
    started = time.monotonic()
    root = ensure_test_models()
    TIMINGS["test models (make or reuse)"] = time.monotonic() - started
    return root


@contextlib.contextmanager
def running_server(tmp_path_factory, test_models, name: str = "", extra_args=(), prepare=None):
    """A ComfyUI server with the pack, test models and input images, stopped on leaving the block; `extra_args`
    go on its command line (e.g. --bf16-unet), `prepare(base_dir)` may add files before it starts."""
    base = make_base_dir(tmp_path_factory.mktemp(f"comfyui-base{'-' + name if name else ''}"))
    link_models(base / "models", test_models)
    write_inputs(base / "input")
    if prepare is not None:
        prepare(base)
    server = ComfyServer(base, startup_timeout=float(os.environ.get("IMAGPOSE_SERVER_STARTUP_TIMEOUT", "300")),
                         extra_args=list(extra_args))
    server.start()
    TIMINGS[f"server start-up{' (' + name + ')' if name else ''}"] = server.startup_seconds
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, test_models):
    """A running ComfyUI server with the pack, test models and input images."""
    with running_server(tmp_path_factory, test_models) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.client.object_info()


@pytest.fixture(scope="session")
def timings():
    return TIMINGS


@pytest.fixture(scope="session")
def measurements():
    """name -> measured value (text), printed at the end of the run."""
    return MEASUREMENTS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ComfyServer):
                report.sections.append((f"ComfyUI server log ({value.base_dir.name})", value.log_tail(150)))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("IMAGPose end-to-end timings (wall seconds)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {name}")
    if MEASUREMENTS:
        terminalreporter.section("IMAGPose end-to-end measurements")
        for name, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{name}: {value}")

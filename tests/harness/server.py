"""Run a real ComfyUI server (subprocess) on a temporary base directory.

    with ComfyServer(base_dir) as server:
        info = server.client.object_info()

The base directory holds ``custom_nodes/comfyui-imagpose`` (a symlink to this repository), ``models/``,
``input/``, ``output/``, ``user/`` and ``temp/``. The server always stops when the ``with`` block ends,
whatever happened inside it. Its log goes to ``<base>/comfyui.log``; ``server.log_tail()`` reads it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .client import ComfyClient, ComfyHTTPError
from .env import PACK_DIR_NAME, REPO_ROOT, comfyui_path, comfyui_python

BASE_SUBDIRS = ("custom_nodes", "models", "input", "output", "temp", "user")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_dir(base_dir: str | os.PathLike | None = None, *, link_pack: bool = True) -> Path:
    """Create (or complete) a ComfyUI base directory and link this repository into custom_nodes/."""
    base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="imagpose-comfy-"))
    for name in BASE_SUBDIRS:
        (base / name).mkdir(parents=True, exist_ok=True)
    if link_pack:
        link = base / "custom_nodes" / PACK_DIR_NAME
        if link.is_symlink() or link.exists():
            if link.resolve() != REPO_ROOT:
                raise RuntimeError(f"{link} exists and is not a link to {REPO_ROOT}")
        else:
            link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


class ComfyServerError(RuntimeError):
    pass


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1 with its own base directory.

    ``startup_timeout`` counts from the start of the process until ``GET /object_info`` answers.
    ``cpu=False`` lets ComfyUI pick its device (a GPU where there is one).
    ``extra_args`` are appended to the command line. ``env`` adds environment variables.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike,
        *,
        port: int | None = None,
        startup_timeout: float = 240.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        comfyui: str | os.PathLike | None = None,
        python: str | None = None,
        cpu: bool = True,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.comfyui = Path(comfyui).resolve() if comfyui else comfyui_path()
        self.python = python or comfyui_python()
        self.cpu = cpu
        self.log_path = self.base_dir / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.client = ComfyClient(f"http://127.0.0.1:{self.port}")
        self.startup_seconds: float | None = None
        self._log_file = None

    # -- command line -------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            self.python,
            "main.py",
            *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--disable-auto-launch",
            "--disable-api-nodes",  # no calls to outside services
            "--database-url", "sqlite:///:memory:",  # keep the shared ComfyUI folder clean
            *self.extra_args,
        ]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        make_base_dir(self.base_dir, link_pack=True)
        env = os.environ.copy()
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        self._log_file = open(self.log_path, "ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.comfyui,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches its children too
        )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {code} during start-up.\n{self.log_tail()}"
                )
            try:
                self.client.object_info(timeout=10)
                return
            except (OSError, ComfyHTTPError) as error:  # not listening yet
                last_error = error
                time.sleep(0.5)
        raise ComfyServerError(
            f"ComfyUI did not answer GET /object_info within {self.startup_timeout:.0f} s "
            f"(last error: {last_error}).\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0, grace: float = 3.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # ComfyUI stops serving at once on Ctrl-C ...
                proc.wait(timeout=grace)  # ... then idles ~10 s before exiting: not worth waiting for
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- logs -----------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 120) -> str:
        text = self.log_text().splitlines()
        tail = "\n".join(text[-lines:])
        return f"----- ComfyUI log ({self.log_path}, last {lines} lines) -----\n{tail}\n----- end of log -----"

    # -- files ----------------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def output_path(self, image_ref: dict) -> Path:
        """File of an image entry from /history outputs ({"filename", "subfolder", "type"})."""
        root = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}[
            image_ref.get("type", "output")
        ]
        return root / image_ref.get("subfolder", "") / image_ref["filename"]


def remove_base_dir(base: Path) -> None:
    """Delete a base directory made by make_base_dir without following the pack symlink."""
    link = base / "custom_nodes" / PACK_DIR_NAME
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(base, ignore_errors=True)

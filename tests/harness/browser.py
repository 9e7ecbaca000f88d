"""ComfyUI's real frontend in headless Chromium (Debian's `chromium`), driven over the DevTools protocol.

    with Browser() as browser:
        ui = Frontend(browser, server.client.base_url)
        ui.open()
        ui.load_workflow(data, "name")
        problems = ui.problems(data, object_info)
        ui.queue()                      # a mouse click on the Run button
        ui.wait_for_images(node_id, 3)  # the Save Image node shows them
        ui.screenshot("out/browser-e2e/name.png")

Used by the browser end-to-end test and by scripts/make_thumbnails.py. No browser is downloaded: a missing
chromium is an error that says how to install it (`apt-get install -y chromium`; `scripts/provision.sh --browser`).
The DevTools protocol is spoken with aiohttp (a ComfyUI requirement), on an event loop owned by the Browser.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from .server import free_port
from .workflow import input_order, is_widget, overlapping

# flags for a machine without network or GPU (background networking would try to reach Google's hosts)
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-dev-shm-usage"]

FRONTEND_SETTINGS = {  # a fresh user: no welcome dialogs, no template browser on start
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.UseNewMenu": "Top",
    "Comfy.Minimap.Visible": False,
    "Comfy.Sidebar.Location": "left",
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
}


class ChromiumMissing(RuntimeError):
    pass


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str:
    """Debian's chromium (or IMAGPOSE_CHROMIUM); a clear error when there is none."""
    candidates = [os.environ.get("IMAGPOSE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ChromiumMissing(
        "Debian's chromium is needed to drive ComfyUI's frontend and was not found (looked at $IMAGPOSE_CHROMIUM, "
        "`chromium` on PATH, /usr/bin/chromium). Install it with `apt-get install -y chromium`, or run "
        "`bash scripts/provision.sh --browser` (scripts/test.sh does)."
    )


def write_frontend_settings(base_dir: str | os.PathLike, settings: dict | None = None) -> Path:
    """The default user's settings file in a ComfyUI base directory (read by the frontend when it opens)."""
    path = Path(base_dir) / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**FRONTEND_SETTINGS, **(settings or {})}))
    return path


class Browser:
    """A headless Chromium process with one page, controlled through synchronous DevTools calls."""

    def __init__(self, chromium: str | None = None, width: int = 1600, height: int = 1000, timeout: float = 120):
        self.chromium = chromium or chromium_path()
        self.width, self.height, self.timeout = width, height, timeout
        self.loop = asyncio.new_event_loop()
        self.process: subprocess.Popen | None = None
        self.profile: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws = None
        self.next_id = 0
        self.console: list[str] = []  # console errors and uncaught exceptions of the page

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Browser":
        port = free_port()
        self.profile = tempfile.mkdtemp(prefix="imagpose-chromium-")  # a fresh profile every time
        self.process = subprocess.Popen(
            [self.chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            page = self._wait_for_page(port)
            self._run(self._connect(page["webSocketDebuggerUrl"]))
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_page(self, port: int) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"{self.chromium} exited with code {self.process.returncode} on start")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            time.sleep(0.3)
        raise BrowserError(f"{self.chromium} opened no page with a DevTools endpoint within 60 s")

    async def _connect(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    def close(self) -> None:
        if self.ws is not None:
            self._run(self.ws.close())
        if self.session is not None:
            self._run(self.session.close())
        self.ws = self.session = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
        self.loop.close()

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- protocol -------------------------------------------------------------------------------
    def _run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    async def _call(self, method: str, params: dict):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive(timeout=self.timeout)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"the DevTools connection closed during {method} ({message.type})")
            data = json.loads(message.data)
            if data.get("id") == my_id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return data.get("result", {})
            self._event(data)

    def _event(self, data: dict) -> None:
        method, params = data.get("method"), data.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append("uncaught: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                             for a in params.get("args", [])))

    def call(self, method: str, **params):
        return self._run(self._call(method, params))

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (awaited if it is a promise); JS errors raise BrowserError."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float, what: str, poll: float = 0.25):
        """Evaluate until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            self._run(asyncio.sleep(poll))
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}")

    def sleep(self, seconds: float) -> None:
        self._run(asyncio.sleep(seconds))

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the first element matching the selector."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2, r.width]; })()")
        if not box or box[2] == 0:
            raise BrowserError(f"nothing visible matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


class Frontend:
    """ComfyUI's frontend (the page a user opens), in a Browser."""

    def __init__(self, browser: Browser, base_url: str):
        self.browser = browser
        self.base_url = base_url.rstrip("/")

    def open(self, timeout: float = 180) -> None:
        self.browser.call("Page.navigate", url=self.base_url + "/")
        self.browser.wait_until("!!(window.app && window.app.graph && window.app.canvas"
                                " && document.querySelector('[data-testid=\"queue-button\"]'))",
                                timeout, "the ComfyUI frontend to start")
        self.browser.sleep(1.0)

    def load_workflow(self, data: dict, name: str) -> None:
        """Open a workflow as the template browser does (app.loadGraphData with the file's name)."""
        self.browser.evaluate(f"app.loadGraphData({json.dumps(data)}, true, true, {json.dumps(name)})"
                              ".then(() => true)")
        self.browser.wait_until(f"app.graph._nodes.length === {len(data['nodes'])}", 30, "the workflow's nodes")
        self.browser.sleep(1.0)
        self.close_dialogs()

    def open_template(self, module: str, name: str, node_count: int) -> None:
        """Open a custom node pack's workflow template as Browse Templates does: fetched from
        /api/workflow_templates/<module>/<name>.json and loaded under its name."""
        url = f"/workflow_templates/{module}/{name}.json"
        self.browser.evaluate(f"fetch(app.api.apiURL({json.dumps(url)})).then(r => {{ if (!r.ok) throw new Error("
                              f"'HTTP ' + r.status + ' for ' + r.url); return r.json(); }})"
                              f".then(data => app.loadGraphData(data, true, true, {json.dumps(name)}))"
                              ".then(() => true)")
        self.browser.wait_until(f"app.graph._nodes.length === {node_count}", 30, "the template's nodes")
        self.browser.sleep(1.0)
        self.close_dialogs()

    def close_dialogs(self) -> None:
        self.browser.evaluate("document.querySelectorAll('.p-dialog-close-button, [aria-label=\"Close\"]')"
                              ".forEach(b => b.click())")

    def graph_state(self) -> list[dict]:
        """What the frontend made of the graph: per node its type, whether it knows the type, its error mark,
        its widgets by name, what it would save as widgets_values, and its rectangle (title bar included)."""
        return self.browser.evaluate("""app.graph._nodes.map(n => ({
            id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type], has_errors: !!n.has_errors,
            widgets: Object.fromEntries((n.widgets || []).filter(w => w.name).map(w => [w.name, w.value])),
            saved: n.serialize().widgets_values || [],
            rect: Array.from(n.boundingRect || n.getBounding())}))""")

    def problems(self, workflow: dict, object_info: dict) -> list[str]:
        """Everything the frontend shows differently from the file: unknown node types, nodes marked red,
        widget values other than the file's (by name, through /object_info, and as the frontend would save them),
        and nodes whose rectangles overlap on the canvas."""
        state = {n["id"]: n for n in self.graph_state()}
        found = []
        for node in workflow["nodes"]:
            shown = state.get(node["id"])
            if shown is None:
                found.append(f"node {node['id']} ({node['type']}) is not on the canvas")
                continue
            if not shown["known"]:
                found.append(f"node {node['id']}: the frontend does not know the node type {node['type']!r}")
            if shown["has_errors"]:
                found.append(f"node {node['id']} ({node['type']}) is marked with errors (red)")
            if node.get("widgets_values") is not None and shown["saved"] != node["widgets_values"]:
                found.append(f"node {node['id']} ({node['type']}): the frontend holds widgets_values {shown['saved']} "
                             f"where the file has {node['widgets_values']}")
            for name, value in file_widgets(node, object_info).items():
                if name not in shown["widgets"]:
                    found.append(f"node {node['id']} ({node['type']}): no widget {name!r} in the frontend")
                elif shown["widgets"][name] != value:
                    found.append(f"node {node['id']} ({node['type']}): widget {name!r} is "
                                 f"{shown['widgets'][name]!r} in the frontend, {value!r} in the file")
        for (id_a, a), (id_b, b) in overlapping([(n["id"], n["rect"]) for n in state.values()]):
            found.append(f"nodes {id_a} ({state[id_a]['type']}) and {id_b} ({state[id_b]['type']}) overlap on the "
                         f"canvas: {a} and {b}")
        return found

    def set_widgets(self, node_id: int, **values) -> None:
        """Set widget values as a user typing them would (the widget's callback runs)."""
        for name, value in values.items():
            done = self.browser.evaluate(
                f"(() => {{ const n = app.graph.getNodeById({node_id}); const w = n && n.widgets.find(w => w.name === "
                f"{json.dumps(name)}); if (!w) return false; w.value = {json.dumps(value)};"
                f" if (w.callback) w.callback(w.value, app.canvas, n); n.setDirtyCanvas(true, true); return true; }})()")
            if not done:
                raise BrowserError(f"node {node_id} has no widget {name!r}")

    def queue(self) -> None:
        """Press the Run (queue) button."""
        self.browser.evaluate("app.lastExecutionError = null, true")
        self.browser.click('[data-testid="queue-button"] button')

    def wait_for_images(self, node_id: int, count: int, timeout: float) -> list[dict]:
        """Wait until the node shows `count` loaded output images on the canvas; returns their sizes and URLs.
        A prompt error (validation or execution) ends the wait with its message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.browser.evaluate(f"""(() => {{
                const errors = app.lastNodeErrors && Object.keys(app.lastNodeErrors).length ? app.lastNodeErrors : null;
                const failure = app.lastExecutionError || errors;
                const n = app.graph.getNodeById({node_id});
                const imgs = (n && n.imgs) || [];
                return {{failure: failure ? JSON.stringify(failure).slice(0, 3000) : null,
                        images: imgs.filter(i => i.complete && i.naturalWidth > 0)
                                    .map(i => ({{src: i.src, width: i.naturalWidth, height: i.naturalHeight}}))}};
            }})()""")
            if state["failure"]:
                raise BrowserError(f"the prompt failed in the frontend: {state['failure']}")
            if len(state["images"]) >= count:
                return state["images"]
            self.browser.sleep(0.5)
        raise BrowserError(f"node {node_id} did not show {count} images within {timeout:.0f} s")

    def queue_sidebar_images(self) -> list[str]:
        """Open the queue/history sidebar; the image URLs it shows."""
        if not self.browser.evaluate("!!document.querySelector('.queue-tab-button.side-bar-button-selected,"
                                     " .queue-tab-button[aria-pressed=\"true\"]')"):
            self.browser.click(".queue-tab-button")
        self.browser.sleep(1.0)
        return self.browser.evaluate("Array.from(document.querySelectorAll('img')).map(i => i.src)"
                                     ".filter(s => s.includes('/view?'))")

    def fit_view(self, top_margin: float = 70) -> None:
        """Fit the whole graph into the canvas, clear of the top menu bar; hide the 'what's new' banner."""
        self.browser.evaluate("(() => { const c = app.canvas; const nodes = app.graph._nodes;"
                              " if (c.fitViewToSelectionAnimated) { c.selectItems(nodes);"
                              " c.fitViewToSelectionAnimated({duration: 1, zoom: 0.9}); c.deselectAll(); }"
                              " c.setDirty(true, true); })()")
        self.browser.sleep(1.0)
        self.browser.evaluate(f"(() => {{ const ds = app.canvas.ds; ds.offset[1] += {top_margin} / ds.scale;"
                              " for (const e of document.querySelectorAll('div, section, header')) {"
                              " if (e.textContent.trim().startsWith('Introducing') && e.offsetHeight < 60"
                              " && e.offsetWidth > window.innerWidth * 0.9) e.style.display = 'none'; }"
                              " app.canvas.setDirty(true, true); })()")
        self.browser.sleep(1.0)

    def screenshot(self, path: str | os.PathLike, max_size: int | None = None, quality: int = 72) -> Path:
        """Save what the page shows: PNG, or JPEG when the path ends in .jpg (scaled to fit max_size)."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(self.browser.screenshot())).convert("RGB")
        if max_size:
            image.thumbnail((max_size, max_size), Image.LANCZOS)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            image.save(path, "JPEG", quality=quality, optimize=True)
        else:
            image.save(path)
        return path


def file_widgets(node: dict, object_info: dict) -> dict:
    """A UI-format node's widget values by name, read through /object_info's input order (the frontend's rule:
    seed-like INT widgets and upload combos carry one extra value)."""
    from .workflow import extra_widget_values

    info = object_info.get(node["type"])
    values = list(node.get("widgets_values") or [])
    if info is None or not isinstance(node.get("widgets_values"), list):
        return {}
    named = {}
    for name, spec in input_order(info):
        if not is_widget(spec) or not values:
            continue
        named[name] = values.pop(0)
        del values[:extra_widget_values(name, spec)]
    return named

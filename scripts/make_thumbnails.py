"""Render workflows/*.jpg: each workflow loaded into ComfyUI's real frontend, screenshotted in headless Chromium.

    python scripts/make_thumbnails.py [--chromium /usr/bin/chromium] [NAME ...]

A developer tool (not run by the tests): needs Debian's chromium (`apt-get install chromium`) and the
provisioned venv (aiohttp for the DevTools protocol). The screenshot is what a user sees right after opening
the workflow from ComfyUI's template browser, so it also shows that the file loads without missing nodes.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import ComfyServer, free_port, make_base_dir, remove_base_dir, write_inputs  # noqa: E402

SETTINGS = {  # a fresh user: no welcome dialogs, no template browser on start
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.UseNewMenu": "Top",
    "Comfy.Minimap.Visible": False,
    "Comfy.Sidebar.Location": "left",
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
}


class DevTools:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")


async def render(url: str, workflows: list[Path], chromium: str, width: int, height: int) -> None:
    port = free_port()
    profile = tempfile.mkdtemp(prefix="imagpose-chromium-")
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        targets = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    targets = [t for t in json.load(resp) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.3)
        if not targets:
            raise RuntimeError("chromium did not open a page")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                dt = DevTools(ws)
                await dt.call("Page.enable")
                await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                              deviceScaleFactor=1, mobile=False)
                await dt.call("Page.navigate", url=url)
                for _ in range(240):
                    if await dt.evaluate("!!(window.app && window.app.graph && window.app.canvas)"):
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise RuntimeError("the ComfyUI frontend did not start")
                await asyncio.sleep(3)
                for path in workflows:
                    data = json.loads(path.read_text())
                    await dt.evaluate(
                        f"app.loadGraphData({json.dumps(data)}, true, true, {json.dumps(path.stem)})")
                    await asyncio.sleep(3)
                    missing = await dt.evaluate(
                        "app.graph._nodes.filter(n => n.has_errors || n.type === undefined"
                        " || !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
                    if missing:
                        raise RuntimeError(f"{path.name}: the frontend does not know nodes {missing}")
                    # close dialogs, fit the graph into the canvas
                    await dt.evaluate("document.querySelectorAll('.p-dialog-close-button, [aria-label=\"Close\"]')"
                                      ".forEach(b => b.click())")
                    await dt.evaluate("(() => { const c = app.canvas; const nodes = app.graph._nodes;"
                                      " if (c.fitViewToSelectionAnimated) { c.selectItems(nodes);"
                                      " c.fitViewToSelectionAnimated({duration: 1, zoom: 0.9}); c.deselectAll(); }"
                                      " c.setDirty(true, true); })()")
                    await asyncio.sleep(1.0)
                    # keep the graph clear of the top menu bar, hide the "what's new" banner
                    await dt.evaluate("(() => { const ds = app.canvas.ds; ds.offset[1] += 70 / ds.scale;"
                                      " for (const e of document.querySelectorAll('div, section, header')) {"
                                      " if (e.textContent.trim().startsWith('Introducing') && e.offsetHeight < 60"
                                      " && e.offsetWidth > window.innerWidth * 0.9) e.style.display = 'none'; }"
                                      " app.canvas.setDirty(true, true); })()")
                    await asyncio.sleep(1.0)
                    shot = await dt.call("Page.captureScreenshot", format="png")
                    import base64

                    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
                    image.thumbnail((1200, 1200), Image.LANCZOS)
                    out = path.with_suffix(".jpg")
                    image.save(out, "JPEG", quality=72, optimize=True)
                    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="workflow file stems (default: all)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--size", default="2000x1250")
    args = parser.parse_args()
    workflows = sorted((REPO / "workflows").glob("*.json"))
    if args.names:
        workflows = [p for p in workflows if p.stem in args.names]
    width, height = map(int, args.size.split("x"))
    base = make_base_dir(tempfile.mkdtemp(prefix="imagpose-thumbnails-"))
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    write_inputs(base / "input")  # the LoadImage nodes show the example photos and poses
    try:
        with ComfyServer(base) as server:
            asyncio.run(render(server.client.base_url + "/", workflows, args.chromium, width, height))
    finally:
        remove_base_dir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render workflows/*.jpg: each workflow loaded into ComfyUI's real frontend, screenshotted in headless Chromium.

    python scripts/make_thumbnails.py [--chromium /usr/bin/chromium] [NAME ...]

A developer tool (not run by the tests): needs Debian's chromium (`apt-get install chromium`) and the
provisioned venv. The screenshot is what a user sees right after opening the workflow from ComfyUI's template
browser; the frontend driver (tests/harness/browser.py) is the one the browser end-to-end test uses, and the
script stops if the frontend shows a problem with a workflow (unknown or red nodes, other widget values, overlaps).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import ComfyServer, load_workflow, make_base_dir, remove_base_dir, write_inputs  # noqa: E402
from harness.browser import Browser, Frontend, chromium_path, write_frontend_settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="workflow file stems (default: all)")
    parser.add_argument("--chromium", help="the browser (default: Debian's chromium)")
    parser.add_argument("--size", default="2000x1250", help="browser window WxH (default: %(default)s)")
    args = parser.parse_args()
    workflows = sorted((REPO / "workflows").glob("*.json"))
    if args.names:
        workflows = [p for p in workflows if p.stem in args.names]
    width, height = map(int, args.size.split("x"))
    chromium = args.chromium or chromium_path()
    base = make_base_dir(tempfile.mkdtemp(prefix="imagpose-thumbnails-"))
    write_frontend_settings(base)
    write_inputs(base / "input")  # the LoadImage nodes show the example photos and poses
    try:
        with ComfyServer(base) as server, Browser(chromium, width, height) as browser:
            info = server.client.object_info()
            ui = Frontend(browser, server.client.base_url)
            ui.open()
            for path in workflows:
                workflow = load_workflow(path)
                ui.load_workflow(workflow, path.stem)
                # model files are not installed here: widget values are compared, the files are not needed
                problems = ui.problems(workflow, info)
                if problems:
                    print(f"{path.name}: the frontend shows problems:\n  " + "\n  ".join(problems), file=sys.stderr)
                    return 1
                ui.fit_view()
                out = ui.screenshot(path.with_suffix(".jpg"), max_size=1200)
                print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    finally:
        remove_base_dir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())

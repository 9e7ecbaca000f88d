"""Minimal HTTP client for ComfyUI's API (standard library only)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ComfyHTTPError(RuntimeError):
    def __init__(self, status: int, url: str, body: str):
        super().__init__(f"HTTP {status} from {url}: {body[:2000]}")
        self.status = status
        self.url = url
        self.body = body

    def json(self):
        return json.loads(self.body)


class PromptFailed(RuntimeError):
    """The prompt ran and ComfyUI reports status "error" in /history."""

    def __init__(self, prompt_id: str, history: dict):
        self.prompt_id = prompt_id
        self.history = history
        super().__init__(f"prompt {prompt_id} failed: {describe_error(history)}")


def describe_error(history: dict) -> str:
    """A readable summary of an /history entry's execution_error message(s)."""
    parts = []
    for name, data in history.get("status", {}).get("messages", []):
        if name == "execution_error":
            parts.append(
                f"{data.get('node_type')} (node {data.get('node_id')}): "
                f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}"
            )
    return "; ".join(parts) or json.dumps(history.get("status"))[:2000]


class ComfyClient:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    # -- raw requests ---------------------------------------------------------------------------
    def request(self, method: str, path: str, payload=None, timeout: float = 60):
        url = self.base_url + path
        data = None
        headers = {}
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            raise ComfyHTTPError(error.code, url, error.read().decode(errors="replace")) from None
        if "json" in ctype:
            return json.loads(body)
        return body

    def get(self, path: str, timeout: float = 60):
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, payload, timeout: float = 60):
        return self.request("POST", path, payload, timeout=timeout)

    # -- API ------------------------------------------------------------------------------------
    def object_info(self, timeout: float = 60) -> dict:
        return self.get("/object_info", timeout=timeout)

    def workflow_templates(self) -> dict:
        return self.get("/workflow_templates")

    def queue_prompt(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. A prompt that fails validation raises ComfyHTTPError (400)."""
        answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        answer = self.get(f"/history/{urllib.parse.quote(prompt_id)}")
        return answer.get(prompt_id)

    def wait_for(self, prompt_id: str, timeout: float = 600, poll: float = 0.5) -> dict:
        """Poll /history/{id} until the prompt finished; returns its history entry (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry
            time.sleep(poll)
        try:
            self.post("/interrupt", {})
        except Exception:  # noqa: BLE001 - best effort
            pass
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue a prompt, wait, and return its history entry; raise PromptFailed on status error."""
        prompt_id = self.queue_prompt(prompt)
        entry = self.wait_for(prompt_id, timeout=timeout)
        if entry.get("status", {}).get("status_str") != "success":
            raise PromptFailed(prompt_id, entry)
        return entry


def output_images(history: dict, node_id: str | None = None) -> list[dict]:
    """Image entries ({"filename", "subfolder", "type"}) in a history entry's outputs."""
    images = []
    for nid, out in history.get("outputs", {}).items():
        if node_id is None or str(nid) == str(node_id):
            images.extend(out.get("images", []))
    return images


def saved_images(history: dict) -> list[dict]:
    """The image entries of a history entry that were saved to the output folder (previews left out)."""
    return [ref for ref in output_images(history) if ref.get("type", "output") == "output"]


def cached_nodes(history: dict) -> set[str]:
    """Ids of the nodes ComfyUI took from its cache for this prompt (the `execution_cached` status message)."""
    return {node for name, data in history.get("status", {}).get("messages", [])
            if name == "execution_cached" for node in data["nodes"]}

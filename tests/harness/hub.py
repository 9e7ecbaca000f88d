"""A stand-in for the Hugging Face Hub on 127.0.0.1, answering what huggingface_hub's hf_hub_download asks.

    with StandInHub({"facebook/dinov2-base": {"config.json": b"...", "model.safetensors": b"..."}}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}

What huggingface_hub (file_download.get_hf_file_metadata / http_get) reads, as the real Hub sends it:
- HEAD /{repo}/resolve/{revision}/{file}: `X-Repo-Commit`; small (git) files answer 200 with `ETag` = the git blob
  sha1 and `Content-Length`; large (LFS, here: > LFS_THRESHOLD bytes or .safetensors/.onnx) files answer 302 with
  `X-Linked-Etag` = sha256, `X-Linked-Size` and `Location` on a second origin (the "CDN", which the client does
  not follow for HEAD); unknown repositories or files answer 404 with `X-Error-Code` RepoNotFound/EntryNotFound.
- GET of the same URL (small files) or of the CDN location: the bytes, honouring `Range: bytes=N-` (206 with
  `Content-Range`), so an interrupted download resumes where it stopped.
Faults for tests: `drop_after[file] = n` sends the full length but closes the connection after n bytes, once;
`corrupt.add(file)` serves bytes that differ from the announced checksum. `requests` records (method, path, Range).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".onnx", ".bin", ".pth")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class StandInHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.blobs = {hashlib.sha256(data).hexdigest(): (name, data)
                      for files in repos.values() for name, data in files.items()}
        self._servers: list[ThreadingHTTPServer] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_port}"

    def start(self) -> "StandInHub":
        for _ in range(2):  # the Hub, and a second origin for LFS blobs
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "StandInHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def gets(self, filename: str) -> list[str | None]:
        """The Range header of every GET of that file's bytes."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith("#" + filename)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                path = self.path.split("?")[0]
                if path.startswith("/cdn/"):
                    name, data = hub.blobs.get(path[5:], (None, None))
                    hub.requests.append((self.command, f"{path}#{name}", self.headers.get("Range")))
                    if data is None:
                        return self.error(404, "EntryNotFound")
                    return self.send_bytes(name, data, {}, body)
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self.error(404, "RepoNotFound")
                repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                hub.requests.append((self.command, f"{path}#{filename}", self.headers.get("Range")))
                files = hub.repos.get(repo)
                if files is None:
                    return self.error(404, "RepoNotFound")
                if revision not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                data = files.get(filename)
                if data is None:
                    return self.error(404, "EntryNotFound")
                headers = {"X-Repo-Commit": COMMIT}
                if filename.endswith(LFS_SUFFIXES):
                    digest = hashlib.sha256(data).hexdigest()
                    headers.update({"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)),
                                    "ETag": f'"{git_blob_sha1(data)}"', "Location": f"{hub.cdn}/cdn/{digest}",
                                    "Content-Length": "0"})
                    self.send_response(302)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    return
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
                return self.send_bytes(filename, data, headers, body)

            def send_bytes(self, name: str, data: bytes, headers: dict, body: bool):
                if name in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes=") and wanted[6:].split("-")[0].isdigit():
                    start = int(wanted[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                drop = hub.drop_after.pop(name, None) if self.command == "GET" else None
                if drop is not None and start < drop < len(data):
                    self.wfile.write(data[start:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # mid-transfer: the client sees a cut connection
                    return
                self.wfile.write(data[start:])

            def error(self, status: int, code: str):
                message = f"{code}: {self.path}".encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                if code == "EntryNotFound":
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(message)

        return Handler

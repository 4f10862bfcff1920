"""A local model hub for the fetch tests: real files served over HTTP on
127.0.0.1 with the Hugging Face Hub's download endpoints (repo info, tree
listing, resolve with HEAD, ETag and Range), which is what
huggingface_hub.snapshot_download speaks. No hub is reachable from here.

`interrupt` names files whose first download is cut short after some bytes,
to exercise resuming; `requests` records what clients asked for."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    def __init__(self, repos: dict[str, Path], interrupt: dict[str, int] | None = None):
        self.repos = repos
        self.interrupt = dict(interrupt or {})
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Hub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self):
                path = self.path.split("?", 1)[0]
                for repo, root in hub.repos.items():
                    if path in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main",
                                f"/api/models/{repo}/revision/{COMMIT}"):
                        siblings = [{"rfilename": p.relative_to(root).as_posix()} for p in hub.files(repo)]
                        return "info", repo, {"id": repo, "sha": COMMIT, "siblings": siblings}
                    if re.fullmatch(rf"/api/models/{re.escape(repo)}/tree/[^/]+(/.*)?", path):
                        tree = [{"type": "file", "path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
                                 "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in hub.files(repo)]
                        return "tree", repo, tree
                    match = re.fullmatch(rf"/{re.escape(repo)}/resolve/[^/]+/(.+)", path)
                    if match and (root / match.group(1)).is_file():
                        return "file", repo, root / match.group(1)
                return None, None, None

            def _file(self, repo: str, file: Path, head: bool) -> None:
                data = file.read_bytes()
                etag = hashlib.sha256(data).hexdigest()
                start = 0
                ranged = self.headers.get("Range")
                if ranged:
                    start = int(re.match(r"bytes=(\d+)-", ranged).group(1))
                name = file.name
                hub.requests.append((self.command, name, ranged))
                self.send_response(206 if ranged else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data) - start))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                cut = hub.interrupt.pop(name, None) if self.command == "GET" else None
                if cut is not None:
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                kind, repo, payload = self._route()
                if kind == "file":
                    self._file(repo, payload, head)
                elif kind in ("info", "tree"):
                    self._json(payload)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        return Handler

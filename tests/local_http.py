"""A local HTTP server for download tests (``http.server`` in a thread).

* ``/files/<name>``: the file ``root/<name>``, with HTTP range requests (206) and an ETag;
* ``/flaky/<name>``: the same file, but the first request for it sends the headers of the whole
  file and half of its bytes, then drops the connection;
* ``/stall/<name>``: sends the headers, then waits ``stall_seconds`` before any byte;
* ``/page/<name>``: an HTML page (200, text/html), what a portal answers instead of a file;
* ``/gdrive/uc?id=ID`` and ``/gdrive-content/download?...``: Google Drive's large-file flow.  A
  file id registered with :meth:`LocalServer.drive` answers ``uc`` with the "can't scan this file
  for viruses" page, whose form (``id``, ``export``, ``confirm=t``, ``uuid``) leads to the file as
  an attachment; ``quota`` ids answer with Drive's "too many users" error page.
  :meth:`LocalServer.reroute_google` sends requests for ``drive.google.com`` and
  ``drive.usercontent.google.com`` made through ``requests`` (what gdown uses) to this server.

``requests_seen`` lists ``(path, Range header)`` of every request.
"""
from __future__ import annotations

import hashlib
import html
import http.server
import socket
import threading
import time
import urllib.parse
from pathlib import Path

CONFIRM_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta http-equiv="content-type" '
    'content="text/html; charset=utf-8"/></head><body><div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">'
    "Google Drive can't scan this file for viruses.</p><p class=\"uc-warning-subcaption\"><span class=\"uc-name-size\">"
    '<a href="/open?id={id}">{name}</a> (1.3G)</span> is too large for Google to scan for viruses. Would you still like to '
    'download this file?</p><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
    '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/>'
    '<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">'
    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div></div>'
    "</body></html>\n"
)
QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    '<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing '
    "the file again later.</p></body></html>\n"
)


class LocalServer:
    def __init__(self, root: Path, stall_seconds: float = 3.0):
        self.root, self.stall_seconds = Path(root), stall_seconds
        self.requests_seen: list[tuple[str, str | None]] = []
        self.drive_files: dict[str, Path] = {}
        self.quota_ids: set[str] = set()
        self._dropped: set[str] = set()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, kind: str, name: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{urllib.parse.quote(name)}" + (f"?{query}" if query else "")

    def served(self, path: Path, kind: str = "files") -> str:
        """The URL of ``path`` (a file under the root)."""
        return self.url(kind, Path(path).relative_to(self.root).as_posix())

    def drive(self, file_id: str, path: Path) -> str:
        """Serve ``path`` as Google Drive file ``file_id``; returns its drive.google.com URL."""
        self.drive_files[file_id] = Path(path)
        return f"https://drive.google.com/uc?id={file_id}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reroute_google(self, monkeypatch) -> None:
        """Requests made through ``requests`` to Google Drive's hosts reach this server instead."""
        import requests

        port = self.port

        class Reroute(requests.adapters.HTTPAdapter):
            def send(self, request, **kwargs):
                u = urllib.parse.urlsplit(request.url)
                prefix = {"drive.google.com": "/gdrive", "drive.usercontent.google.com": "/gdrive-content"}[u.hostname]
                request.url = urllib.parse.urlunsplit(("http", f"127.0.0.1:{port}", prefix + u.path, u.query, ""))
                return super().send(request, **kwargs)

        adapter = Reroute()
        real = requests.Session.get_adapter

        def get_adapter(session, url):
            host = urllib.parse.urlsplit(url).hostname
            return adapter if host in ("drive.google.com", "drive.usercontent.google.com") else real(session, url)

        monkeypatch.setattr(requests.Session, "get_adapter", get_adapter)

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                u = urllib.parse.urlsplit(self.path)
                server.requests_seen.append((u.path, self.headers.get("Range")))
                query = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
                kind, _, name = u.path.lstrip("/").partition("/")
                name = urllib.parse.unquote(name)
                if kind == "gdrive" and name == "uc":
                    return self._drive_uc(query.get("id", ""))
                if kind == "gdrive-content" and name == "download":
                    return self._drive_download(query)
                if kind == "page":
                    return self._send(200, f"<!DOCTYPE html><html><head><title>{html.escape(name)}</title></head>"
                                           "<body>Please sign in to download.</body></html>\n".encode(), "text/html")
                path = server.root / name
                if not path.is_file():
                    return self._send(404, b"not found\n", "text/plain")
                data = path.read_bytes()
                if kind == "flaky" and name not in server._dropped:
                    server._dropped.add(name)
                    return self._drop_halfway(data)
                if kind == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.flush()
                    time.sleep(server.stall_seconds)
                    self.wfile.write(data)
                    return None
                if kind in ("files", "flaky"):
                    return self._send_file(data)
                return self._send(404, b"not found\n", "text/plain")

            def _send(self, status, body, ctype, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, data, extra=None):
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                headers = {"Accept-Ranges": "bytes", "ETag": etag, **(extra or {})}
                rng = self.headers.get("Range")
                if rng and (self.headers.get("If-Range") in (None, etag)):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self._send(206, data[start:], "application/octet-stream", headers)
                return self._send(200, data, "application/octet-stream", headers)

            def _drop_halfway(self, data):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def _drive_uc(self, file_id):
                if file_id in server.quota_ids:
                    return self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
                if file_id not in server.drive_files:
                    return self._send(404, b"not found\n", "text/html")
                page = CONFIRM_PAGE.format(id=file_id, name=server.drive_files[file_id].name, uuid=_uuid(file_id))
                return self._send(200, page.encode(), "text/html; charset=utf-8")

            def _drive_download(self, query):
                file_id = query.get("id", "")
                if file_id not in server.drive_files or query.get("confirm") != "t" or query.get("uuid") != _uuid(file_id):
                    return self._drive_uc(file_id)
                path = server.drive_files[file_id]
                return self._send_file(path.read_bytes(), {"Content-Disposition": f'attachment; filename="{path.name}"'})

        return Handler


def _uuid(file_id: str) -> str:
    return hashlib.md5(file_id.encode()).hexdigest()

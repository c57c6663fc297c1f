"""Servers on 127.0.0.1 for the remote-slide tests: a plain HTTP server with Range support and
an S3 server (moto's app, served by werkzeug), both with fault injection.

Faults are consumed in order by ranged GETs (`server.faults`, a list of kinds):
- "503": a 503 answer;
- "drop": the headers announce the whole range, half the body is sent, the connection closed;
- "short": a well-formed answer whose body is half the range (Content-Length says so);
- None: a normal answer.
`server.change(name, data)` replaces an object (a new ETag) between two reads.
Every request is logged in `server.log` as (method, path, range header).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    if not header or not header.startswith("bytes="):
        return None
    a, b = header[6:].split(",")[0].split("-")
    if a == "":
        return max(0, size - int(b)), size
    return int(a), min(size, int(b) + 1) if b else size


class FaultPlan:
    def __init__(self):
        self.faults: list[str | None] = []
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def record(self, method: str, path: str, rng: str | None) -> None:
        with self.lock:
            self.log.append((method, path, rng))

    def ranged_gets(self, suffix: str = "") -> int:
        return sum(1 for m, p, r in self.log if m == "GET" and r and p.endswith(suffix))


class RangeHTTPServer(FaultPlan):
    """Serves `files` ({name: bytes}) at http://127.0.0.1:<port>/<name> (HEAD, GET, Range,
    If-Match, ETag)."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = dict(files)
        plan = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _object(self):
                name = self.path.lstrip("/").split("?")[0]
                return plan.files.get(name)

            def do_HEAD(self):
                plan.record("HEAD", self.path, None)
                data = self._object()
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", _etag(data))
                self.end_headers()

            def do_GET(self):
                rng = self.headers.get("Range")
                plan.record("GET", self.path, rng)
                data = self._object()
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                match = self.headers.get("If-Match")
                if match and match != _etag(data):
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                span = _parse_range(rng, len(data))
                fault = plan.next_fault() if span else None
                if fault == "503":
                    body = b"busy"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                a, b = span or (0, len(data))
                body = data[a:b]
                if fault == "short":
                    body = body[: len(body) // 2]
                self.send_response(206 if span else 200)
                if span:
                    self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/"
                                                      f"{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", _etag(data))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def change(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _FaultMiddleware:
    """WSGI wrapper injecting the plan's faults into ranged GETs of the S3 app."""

    def __init__(self, app, plan: FaultPlan):
        self.app, self.plan = app, plan

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        rng = environ.get("HTTP_RANGE")
        self.plan.record(method, path, rng)
        fault = self.plan.next_fault() if method == "GET" and rng else None
        if fault == "503":
            body = (b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
                    b"<Message>Please reduce your request rate.</Message></Error>")
            start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                              ("Content-Length", str(len(body)))])
            return [body]
        if fault in ("drop", "short"):
            status_headers: dict = {}

            def capture(status, headers, exc_info=None):
                status_headers["s"], status_headers["h"] = status, headers
                return lambda _b: None

            body = b"".join(self.app(environ, capture))
            half = body[: len(body) // 2]
            headers = [(k, v) for k, v in status_headers["h"] if k.lower() != "content-length"]
            length = len(body) if fault == "drop" else len(half)
            start_response(status_headers["s"], headers + [("Content-Length", str(length))])
            return [half]
        return self.app(environ, start_response)


class S3Server(FaultPlan):
    """moto's S3 on 127.0.0.1 (werkzeug, threaded), with the fault plan in front."""

    def __init__(self):
        super().__init__()
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):
                pass

        app = DomainDispatcherApplication(create_backend_app)
        self.server = make_server("127.0.0.1", 0, _FaultMiddleware(app, self), threaded=True,
                                  request_handler=Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def put(self, bucket: str, key: str, data: bytes | Path) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=bucket)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        c.put_object(Bucket=bucket, Key=key, Body=data if isinstance(data, bytes) else
                     Path(data).read_bytes())
        return f"s3://{bucket}/{key}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Servers on 127.0.0.1 for the remote-slide tests: a plain HTTP server with Range support and
an S3 server (moto's app, served by werkzeug), both with fault injection.

Faults are consumed in order by ranged GETs (`server.faults`, a list of kinds):
- "503": a 503 answer;
- "drop": the headers announce the whole range, half the body is sent, the connection closed;
- "short": a well-formed answer whose body is half the range (Content-Length says so);
- None: a normal answer.
S3 only: "expired" answers 403 AccessDenied "Request has expired" (what S3 says to a presigned
URL past its time, which the S3 server also says on its own: X-Amz-Date + X-Amz-Expires before
now), "refused" answers 400 AuthorizationQueryParametersError (a store refusing the presigned
form).
`server.change(name, data)` replaces an object (a new ETag) between two reads.
Every request is logged in `server.log` as (method, path, range header); the S3 server also
logs each ranged GET's query string and Authorization header in `server.auth`.
"""

from __future__ import annotations

import calendar
import hashlib
import socket
import threading
import time
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
        self.auth: list[tuple[str, str | None]] = []
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
    If-Match, ETag); a path ending in '/' answers an HTML page linking the files under it (a
    folder listing, as fsspec reads one). Query strings are ignored (and logged)."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = dict(files)
        plan = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _empty(self, code: int) -> None:
                """An answer with no body (404, 412)."""
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _object(self):
                name = self.path.lstrip("/").split("?")[0]
                return plan.files.get(name)

            def do_HEAD(self):
                plan.record("HEAD", self.path, None)
                data = self._object()
                if data is None:
                    return self._empty(404)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", _etag(data))
                self.end_headers()

            def do_GET(self):
                rng = self.headers.get("Range")
                plan.record("GET", self.path, rng)
                folder = self.path.lstrip("/").split("?")[0]
                if folder == "" or folder.endswith("/"):  # a folder: a page linking its files
                    names = sorted(n[len(folder):] for n in plan.files if n.startswith(folder))
                    body = "".join(f'<a href="{n}">{n}</a>\n' for n in names).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body)
                data = self._object()
                if data is None:
                    return self._empty(404)
                match = self.headers.get("If-Match")  # strong comparison: W/ never matches
                if match and (match.startswith("W/") or match != _etag(data)):
                    return self._empty(412)
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


def _s3_error(start_response, status: str, code: str, message: str):
    body = (f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error>").encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _presign_expired(query: str) -> bool:
    """A SigV4 presigned URL past X-Amz-Date + X-Amz-Expires (moto does not check)."""
    from urllib.parse import parse_qs

    q = parse_qs(query)
    if "X-Amz-Date" not in q or "X-Amz-Expires" not in q:
        return False
    signed = calendar.timegm(time.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return time.time() > signed + int(q["X-Amz-Expires"][0])


class _FaultMiddleware:
    """WSGI wrapper injecting the plan's faults into ranged GETs of the S3 app."""

    def __init__(self, app, plan: FaultPlan):
        self.app, self.plan = app, plan

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        rng = environ.get("HTTP_RANGE")
        self.plan.record(method, path, rng)
        fault = self.plan.next_fault() if method == "GET" and rng else None
        if method == "GET" and rng:
            query = environ.get("QUERY_STRING", "")
            with self.plan.lock:
                self.plan.auth.append((query, environ.get("HTTP_AUTHORIZATION")))
            if fault == "expired" or _presign_expired(query):
                return _s3_error(start_response, "403 Forbidden", "AccessDenied",
                                 "Request has expired")
        if fault == "refused":
            return _s3_error(start_response, "400 Bad Request",
                             "AuthorizationQueryParametersError",
                             "Query-string authentication version 4 requires the X-Amz-Algorithm"
                             " parameter")
        if fault == "503":
            return _s3_error(start_response, "503 Slow Down", "SlowDown",
                             "Please reduce your request rate.")
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


class DicomWebServer(FaultPlan):
    """A minimal DICOMweb server for the instances in `folder` (one series): QIDO-RS
    `/series`, `/studies/{s}/series`, `/studies/{s}/instances` and
    `/studies/{s}/series/{se}/instances`, WADO-RS
    `.../instances/{i}/metadata` (JSON, bulk data left out) and `.../instances/{i}/frames/{n,...}`
    (multipart/related; type="image/jpeg", the stored frames as they are). Faults apply to
    frame requests."""

    def __init__(self, folder: Path):
        super().__init__()
        import pydicom
        from pydicom.encaps import generate_frames

        self.instances: dict[str, dict] = {}
        for f in sorted(Path(folder).iterdir()):
            ds = pydicom.dcmread(f)
            frames = list(generate_frames(ds.PixelData, number_of_frames=int(
                ds.get("NumberOfFrames", 1))))
            meta = ds.copy()
            del meta.PixelData
            js = meta.to_json_dict(bulk_data_threshold=1 << 30,
                                   bulk_data_element_handler=lambda _e: "")
            js["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
            self.instances[str(ds.SOPInstanceUID)] = {"ds": ds, "json": js, "frames": frames}
        first = next(iter(self.instances.values()))["ds"]
        self.study, self.series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        plan = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", ctype="application/dicom+json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                import json
                from urllib.parse import parse_qs, urlsplit

                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                plan.record("GET", url.path, None)
                query = parse_qs(url.query)
                if parts[-1] == "series":  # QIDO-RS series search (`/series`, `/studies/{s}/series`)
                    first = next(iter(plan.instances.values()))
                    study_ok = len(parts) < 4 or parts[-2] == plan.study
                    modality = query.get("Modality", query.get("00080060", [None]))[0]
                    hit = study_ok and modality in (None, str(first["ds"].get("Modality", "SM")))
                    hit = hit and int(query.get("offset", ["0"])[0]) == 0  # one page
                    return self._send(200, json.dumps([self._qido(first)] if hit else []).encode())
                if parts[-1] == "instances":  # QIDO-RS search
                    wanted = [u for v in query.get("SeriesInstanceUID", []) +
                              query.get("0020000E", []) for u in v.split(",")]
                    if len(parts) > 4 and parts[-3] == "series":
                        wanted.append(parts[-2])
                    sop = query.get("SOPClassUID", query.get("00080016", [None]))[0]
                    modality = query.get("Modality", query.get("00080060", [None]))[0]
                    out = [self._qido(i) for i in plan.instances.values()
                           if (not wanted or plan.series in wanted)
                           and sop in (None, str(i["ds"].SOPClassUID))
                           and modality in (None, str(i["ds"].get("Modality", "SM")))]
                    return self._send(200, json.dumps(out).encode())
                at = parts.index("instances") + 1 if "instances" in parts else len(parts)
                if at >= len(parts) or parts[at] not in plan.instances:
                    return self._send(404)
                inst = plan.instances[parts[at]]
                if parts[-1] == "metadata":
                    return self._send(200, json.dumps([inst["json"]]).encode())
                if parts[-2] == "frames":
                    if plan.next_fault() == "503":
                        return self._send(503, b"busy", "text/plain")
                    numbers = [int(n) for n in parts[-1].split(",")]
                    if any(not 1 <= n <= len(inst["frames"]) for n in numbers):
                        return self._send(404)
                    boundary = "sfboundary"
                    body = b"".join(
                        b"--" + boundary.encode() + b"\r\nContent-Type: image/jpeg\r\n\r\n" +
                        inst["frames"][n - 1] + b"\r\n" for n in numbers)
                    body += b"--" + boundary.encode() + b"--\r\n"
                    return self._send(200, body, f'multipart/related; type="image/jpeg"; '
                                                 f"boundary={boundary}")
                return self._send(404)

            def _qido(self, inst):
                ds = inst["ds"]
                return {
                    "0020000D": {"vr": "UI", "Value": [str(ds.StudyInstanceUID)]},
                    "0020000E": {"vr": "UI", "Value": [str(ds.SeriesInstanceUID)]},
                    "00080018": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                    "00080016": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                    "00080060": {"vr": "CS", "Value": [str(ds.get("Modality", "SM"))]},
                    "00083002": {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]},
                }

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self) -> str:
        return (f"dicomweb+http://{self.base}/dicomweb?study={self.study}"
                f"&series={self.series}")

    def frame_requests(self) -> int:
        return sum(1 for m, p, _ in self.log if "/frames/" in p)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class GCSServer(FaultPlan):
    """The routes of Google Cloud Storage's JSON API that gcsfs reads with, for the objects
    `objects` ({"bucket/key": bytes}); gcsfs points here through STORAGE_EMULATOR_HOST:
    object metadata `GET /storage/v1/b/{b}/o/{key}`, listing `GET /storage/v1/b/{b}/o`
    (`prefix`, `delimiter`; one page) and media `GET /download/storage/v1/b/{b}/o/{key}
    ?alt=media` with Range. Faults apply to media GETs."""

    def __init__(self, objects: dict[str, bytes]):
        super().__init__()
        self.objects = dict(objects)
        plan = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", ctype="application/json", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _meta(self, bucket, key):
                data = plan.objects[f"{bucket}/{key}"]
                return {"kind": "storage#object", "bucket": bucket, "name": key,
                        "size": str(len(data)), "etag": _etag(data).strip('"'),
                        "generation": "1", "metageneration": "1",
                        "updated": "2024-01-01T00:00:00.000Z"}

            def do_GET(self):
                import json
                from urllib.parse import parse_qs, unquote, urlsplit

                url = urlsplit(self.path)
                query = parse_qs(url.query)
                rng = self.headers.get("Range")
                plan.record("GET", url.path, rng)
                parts = url.path.split("/")
                media = parts[1] == "download"
                if media:
                    parts = parts[1:]
                # ['', 'storage', 'v1', 'b', bucket, 'o', key?]
                if len(parts) < 6 or parts[1:4] != ["storage", "v1", "b"] or parts[5] != "o":
                    return self._send(404, b"{}")
                bucket = parts[4]
                key = unquote("/".join(parts[6:]))
                if not key:  # listing
                    prefix = query.get("prefix", [""])[0]
                    delim = query.get("delimiter", [""])[0]
                    items, prefixes = [], set()
                    for name in sorted(plan.objects):
                        b, _, k = name.partition("/")
                        if b != bucket or not k.startswith(prefix):
                            continue
                        rest = k[len(prefix):]
                        if delim and delim in rest:
                            prefixes.add(prefix + rest.split(delim)[0] + delim)
                        else:
                            items.append(self._meta(b, k))
                    body = {"kind": "storage#objects", "items": items,
                            "prefixes": sorted(prefixes)}
                    return self._send(200, json.dumps(body).encode())
                if f"{bucket}/{key}" not in plan.objects:
                    return self._send(404, b'{"error": {"code": 404, "message": "No such '
                                           b'object"}}')
                if not media:
                    return self._send(200, json.dumps(self._meta(bucket, key)).encode())
                data = plan.objects[f"{bucket}/{key}"]
                if plan.next_fault() == "503":
                    return self._send(503, b'{"error": {"code": 503, "message": "busy"}}')
                span = _parse_range(rng, len(data))
                a, b = span or (0, len(data))
                extra = [("Content-Range", f"bytes {a}-{b - 1}/{len(data)}")] if span else []
                return self._send(206 if span else 200, data[a:b],
                                  "application/octet-stream", extra)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

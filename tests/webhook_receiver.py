"""A webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread, recording every request and
answering 500 to the first `fail_first` ones (or to all while `failing`), then 200 with `answer`."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered
    at: float

    @property
    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = orjson.loads(self.body)
        return found

    @property
    def seq(self) -> int:
        return int(self.event["seq"])

    def signed_by(self, secret: str, tolerance_seconds: float = 300) -> bool:
        """The documented check, written out (not the service's own code): t=<unix>,v1=<hex HMAC-SHA256
        of "<t>." + body>, and t close to now."""
        fields = dict(part.split("=", 1) for part in self.headers["x-statemanager-signature"].split(","))
        message = fields["t"].encode() + b"." + self.body
        expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(fields["t"])) <= tolerance_seconds
        return fresh and hmac.compare_digest(expected, fields["v1"])


class Receiver:
    def __init__(
        self, fail_first: int = 0, *, failing: bool = False, answer: bytes = b"ok", delay: float = 0.0
    ) -> None:
        self.fail_first = fail_first
        self.failing = failing
        self.answer = answer
        self.delay = delay  # seconds before answering
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    failed = receiver.failing or len(receiver.requests) < receiver.fail_first
                    status = 500 if failed else 200
                    receiver.requests.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, status, time.time())
                    )
                time.sleep(receiver.delay)
                answer = b'{"error":"not now"}' if failed else receiver.answer
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that stopped reading (the service reads only the start of an answer)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

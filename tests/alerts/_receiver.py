"""A real HTTP webhook receiver for the alert tests (stdlib ``http.server`` on loopback).

It verifies every request's ``Meterline-Signature`` with the secret as a receiver would
(:func:`verify`, independent of meterline's own code), records each request and answers
with the statuses it is told (``answers``: a list consumed one per request; afterwards
``default``), after ``delay`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(body: bytes, signature: str, secret: str, tolerance: int = 300) -> bool:
    """The snippet of docs/alerts.md, verbatim."""
    try:
        fields = dict(item.split("=", 1) for item in signature.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:  # refuse replays of old requests
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields.get("v1", ""))


@dataclass
class Received:
    delivery: str
    event: str
    signed: bool
    body: dict[str, Any]
    status: int


@dataclass
class Receiver:
    secret: str
    answers: list[int] = field(default_factory=list)
    default: int = 200
    requests: list[Received] = field(default_factory=list)
    delay: float = 0.0
    """Seconds to wait before answering (a slow receiver)."""

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = verify(raw, self.headers.get("Meterline-Signature", ""), outer.secret)
                time.sleep(outer.delay)
                with outer._lock:
                    status = outer.answers.pop(0) if outer.answers else outer.default
                    outer.requests.append(Received(
                        self.headers.get("Meterline-Delivery", ""),
                        self.headers.get("Meterline-Event", ""), signed, json.loads(raw),
                        status))  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> list[Received]:
        """Requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

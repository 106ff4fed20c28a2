"""The aggregator's reservation API, spoken with the standard library only.

``http.client`` rather than httpx: the app's httpx is what meterline instruments, and
the guard must not show up as the app's own traffic (nor pull in a dependency). One
keep-alive connection per thread; every call bounded by ``timeout`` seconds.

Contract: :meth:`ReservationClient.post` and :meth:`~ReservationClient.delete` return
the parsed JSON object of a 2xx answer, or raise :class:`Unavailable` with a one-line
reason for anything else — refused connection, timeout, a non-2xx status, a body that
is not a JSON object — so the guard has exactly one failure to handle.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.parse
from typing import Any


class Unavailable(Exception):
    """The aggregator did not give a usable answer (the guard's fail-open/closed case).

    ``down`` is True when it did not answer at all (refused, reset, timed out).
    """

    def __init__(self, reason: str, *, down: bool = False) -> None:
        super().__init__(reason)
        self.down = down


class ReservationClient:
    """``POST``/``DELETE`` under ``base_url`` with the bearer ``key``."""

    def __init__(self, base_url: str, key: str | None, *, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"METERLINE_API_URL {base_url!r} must be an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json.dumps(body).encode())

    def delete(self, path: str) -> dict[str, Any]:
        return self._request("DELETE", path, None)

    def _request(self, method: str, path: str, data: bytes | None) -> dict[str, Any]:
        url = self._prefix + path
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, url, body=data, headers=self._headers)
                response = conn.getresponse()
                status = response.status
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A keep-alive connection the server closed meanwhile: once more on a new one.
                self._drop()
                if attempt == 0:
                    continue
                raise Unavailable(f"{method} {url}: {exc.__class__.__name__}", down=True) from None
            except TimeoutError:
                self._drop()
                reason = f"{method} {url}: no answer within {self.timeout:g} s"
                raise Unavailable(reason, down=True) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                reason = f"{method} {url}: {exc.__class__.__name__}: {exc}"
                raise Unavailable(reason, down=True) from None
            if response.will_close:
                self._drop()
            break
        if status == 204:
            return {}
        if not 200 <= status < 300:
            raise Unavailable(f"{method} {url} answered {status}: {_detail(raw)}")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise Unavailable(
                f"{method} {url} answered {status} with a body that is not JSON"
            ) from None
        if not isinstance(answer, dict):
            raise Unavailable(f"{method} {url} answered {status} with JSON that is not an object")
        return answer


def _detail(raw: bytes) -> str:
    try:
        detail = json.loads(raw).get("detail")
    except Exception:
        detail = None
    if isinstance(detail, str):
        return detail[:200]
    return raw[:200].decode("utf-8", "replace") or "(no body)"

"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3/4,
NUL-terminated JSON), no extra dependency: open a tab, fill and submit the page's forms,
evaluate script, wait for a condition, read console errors and uncaught exceptions, take
a screenshot — what ``--dump-dom`` cannot do. One browser serves many tests: each
:meth:`Browser.open` is a fresh tab (its own ``sessionStorage``)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any


class Browser:
    """Headless Chromium driven through the DevTools pipe."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child, before it closes every fd not in pass_fds
            read, write = os.dup(to_child_r), os.dup(from_child_w)  # neither is 3 or 4 now
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-quic", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--disable-extensions", "--window-size=1280,1800",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session and self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self) -> None:
        """A new tab (the earlier one's events are dropped)."""
        if self.session is not None:
            self.send("Target.closeTarget", session=False, targetId=self._target)
        self.events = []
        target = self.send("Target.createTarget", session=False, url="about:blank")
        attached = self.send(
            "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
        )
        self.session = attached["sessionId"]
        self._target = target["targetId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Log.enable")

    def navigate(self, url: str, timeout: float = 30) -> str:
        """Open ``url``, wait for its load event and a settled frame; return the DOM."""
        return self.load(lambda: self.send("Page.navigate", url=url), timeout)

    def submit(self, expression: str, timeout: float = 30) -> str:
        """Run ``expression`` (which submits a form), wait for the next page; its DOM."""
        return self.load(lambda: self.send("Runtime.evaluate", expression=expression), timeout)

    def load(self, start: Any, timeout: float = 30, url: str = "the page") -> str:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        start()
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            self.events.append(self._read())
        self.send("Runtime.evaluate", expression="new Promise(r => requestAnimationFrame(r))",
                  awaitPromise=True)  # fmt: skip
        result = self.send("Runtime.evaluate", expression="document.documentElement.outerHTML")
        return result["result"]["value"]

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the tab (promises awaited); its exception raises."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 30) -> None:
        """Until the expression ``condition`` is true in the tab."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition} did not become true; errors: {self.errors()}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page at ``path``."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            console = method == "Runtime.consoleAPICalled" and params.get("type") == "error"
            logged = method == "Log.entryAdded" and params["entry"].get("level") == "error"
            if method == "Runtime.exceptionThrown" or console or logged:
                out.append(params)
        return out

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close", session=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)

"""An app that makes LLM calls, then waits to be stopped: ``python app_stop.py READY [options]``.

It uses the real ``openai`` SDK (``OPENAI_BASE_URL``), alternating plain and streamed chat
completions tagged ``x-simulator-tag: $METERLINE_CONSUMER_ID``. After the last call it
writes READY, then idles until a signal stops it or ``READY.stop`` appears (then it exits
with 0, or with ``--exit-code`` if its own handler asked it to stop). Options:

* ``--handler before|after`` — install its own SIGTERM handler before meterline is
  instrumented (``instrument()`` called in code, no wrapper) or after (under a wrapper);
  the handler writes ``READY.handled`` and then, per ``--on-signal``: ``exit``
  (``sys.exit(code)``), ``flag`` (the main loop returns ``code``), ``os-exit``
  (``os._exit(code)``) or ``default`` (restores ``SIG_DFL`` and re-raises, as uvicorn does);
* ``--ignore-term`` — ``signal.signal(SIGTERM, SIG_IGN)`` after start-up;
* ``--instrument-in-code`` — call ``meterline.instrumentation.instrument()`` itself;
* ``--then-stream`` — after the calls, start a slow stream (tagged ``<consumer>-stream``)
  and write READY once its first chunk arrived: the app is stopped mid-stream.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from types import FrameType

import openai


def make_calls(n: int, tag: str) -> None:
    client = openai.OpenAI(default_headers={"x-simulator-tag": tag}, max_retries=0)
    for i in range(n):
        messages = [{"role": "user", "content": f"call {i}"}]
        if i % 2:
            for _ in client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,  # type: ignore[arg-type]
                stream=True,
            ):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ready")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--handler", choices=["none", "before", "after"], default="none")
    parser.add_argument(
        "--on-signal", choices=["exit", "flag", "os-exit", "default"], default="exit"
    )
    parser.add_argument("--exit-code", type=int, default=7)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--instrument-in-code", action="store_true")
    parser.add_argument("--then-stream", action="store_true")
    args = parser.parse_args(argv)
    stopping: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        with open(args.ready + ".handled", "a") as fh:
            fh.write(f"{signum}\n")
        if args.on_signal == "exit":
            sys.exit(args.exit_code)
        if args.on_signal == "os-exit":
            os._exit(args.exit_code)
        if args.on_signal == "default":
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stopping.append(args.exit_code)

    if args.handler == "before":
        signal.signal(signal.SIGTERM, handler)
    if args.instrument_in_code or args.handler == "before":
        from meterline.instrumentation import instrument

        instrument()
    if args.handler == "after":
        signal.signal(signal.SIGTERM, handler)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    tag = os.environ.get("METERLINE_CONSUMER_ID", "")
    make_calls(args.calls, tag)
    stream = None
    if args.then_stream:
        slow = {"x-simulator-chunk-delay-ms": "200", "x-simulator-output-tokens": "100"}
        client = openai.OpenAI(default_headers={"x-simulator-tag": tag + "-stream"})
        stream = iter(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "a long answer"}],
                stream=True,
                extra_headers=slow,
            )
        )
        next(stream)
    with open(args.ready + ".tmp", "w") as fh:
        json.dump({"pid": os.getpid(), "done": time.time()}, fh)
    os.replace(args.ready + ".tmp", args.ready)
    for _ in stream or ():
        pass
    while not stopping and not os.path.exists(args.ready + ".stop"):
        time.sleep(0.01)
    return stopping[0] if stopping else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

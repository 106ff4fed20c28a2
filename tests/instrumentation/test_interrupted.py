"""Calls still in flight when the process is about to die are ended, not lost."""

from __future__ import annotations

import contextlib
import threading

import httpx2
import openai

from meterline.instrumentation._call import INTERRUPTED, interrupt_in_flight

from .conftest import Recorded
from .fakes import FakeLLM

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


def client(transport: httpx2.MockTransport) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="https://api.openai.com/v1",
        http_client=httpx2.Client(transport=transport),
        max_retries=0,
    )


def test_a_stream_in_flight_is_ended_as_an_estimate(recorded: Recorded, fake: FakeLLM) -> None:
    stream = client(httpx2.MockTransport(fake.handler(httpx2))).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    next(iter(stream))  # headers and a first chunk in: the provider is at work
    assert recorded.spans() == []
    assert interrupt_in_flight() == 1
    attrs = recorded.one()
    assert attrs["meterline.call.interrupted"] is True
    assert attrs["meterline.usage.estimated"] is True
    assert attrs["gen_ai.usage.input_tokens"] > 0 and "error.type" not in attrs
    list(stream)  # the app goes on reading: nothing more is recorded
    assert len(recorded.spans()) == 1
    assert interrupt_in_flight() == 0


def test_a_call_with_no_answer_yet_is_stored_as_failed_not_billed(recorded: Recorded) -> None:
    entered, release = threading.Event(), threading.Event()

    def handler(request: httpx2.Request) -> httpx2.Response:
        entered.set()
        release.wait(5)
        raise httpx2.ConnectError("gone", request=request)

    worker = threading.Thread(
        target=lambda: _ignore(
            lambda: client(httpx2.MockTransport(handler)).chat.completions.create(
                model="gpt-4o", messages=MESSAGES
            )
        )
    )
    worker.start()
    assert entered.wait(5)
    assert interrupt_in_flight() == 1
    release.set()
    worker.join(5)
    attrs = recorded.one()
    assert attrs["error.type"] == INTERRUPTED
    assert attrs["meterline.call.interrupted"] is True
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (0, 0)


def _ignore(fn):  # type: ignore[no-untyped-def]
    with contextlib.suppress(Exception):
        fn()

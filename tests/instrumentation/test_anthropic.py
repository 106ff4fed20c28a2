"""The real anthropic SDK (httpx2): cache normalisation, 1-hour writes, streams."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx2
import pytest

from meterline.instrumentation import consumer

from .conftest import Recorded
from .fakes import FakeLLM

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]
# input 50 + cache read 3000 + cache writes 2000 (of which 1500 for one hour)
EXPECTED = {
    "gen_ai.usage.input_tokens": 5050,
    "gen_ai.usage.output_tokens": 120,
    "gen_ai.usage.cache_read.input_tokens": 3000,
    "gen_ai.usage.cache_creation.input_tokens": 2000,
    "meterline.usage.cache_creation_1h.input_tokens": 1500,
}


def client(fake: FakeLLM, **kwargs: Any) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(fake.handler(httpx2))
    return anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="https://api.anthropic.com",
        http_client=httpx2.Client(transport=transport),
        **kwargs,
    )


def test_messages_non_streamed(recorded: Recorded, fake: FakeLLM) -> None:
    message = client(fake).messages.create(
        model="claude-sonnet-4-20250514", max_tokens=1024, messages=MESSAGES
    )
    assert message.content[0].text.startswith("The quick")
    attrs = recorded.one()
    assert {k: attrs[k] for k in EXPECTED} == EXPECTED
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.max_tokens"] == 1024
    assert attrs["gen_ai.response.id"] == "msg_01XYZ"
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert "meterline.usage.estimated" not in attrs


def test_messages_streamed_sync_and_async(recorded: Recorded, fake: FakeLLM) -> None:
    with client(fake).messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=1024, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "The quick brown fox jumps over the lazy dog."

    async def run() -> str:
        ac = anthropic.AsyncAnthropic(
            api_key="k",
            base_url="https://api.anthropic.com",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake.handler(httpx2))),
        )
        events = await ac.messages.create(
            model="claude-sonnet-4-20250514", max_tokens=1024, messages=MESSAGES, stream=True
        )
        return "".join(
            [e.delta.text async for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
        )

    assert asyncio.run(run()) == text
    spans = recorded.spans()
    assert len(spans) == 2
    for span in spans:
        attrs = dict(span.attributes or {})
        assert {k: attrs[k] for k in EXPECTED} == EXPECTED
        assert attrs["meterline.request.stream"] is True
        assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)


def test_stream_cut_short_keeps_provider_input(recorded: Recorded, fake: FakeLLM) -> None:
    stream = client(fake).messages.create(
        model="claude-sonnet-4-20250514", max_tokens=1024, messages=MESSAGES, stream=True
    )
    for n, _event in enumerate(stream):
        if n == 5:
            break
    stream.close()
    attrs = recorded.one()
    assert attrs["meterline.usage.estimated"] is True
    assert attrs["gen_ai.usage.input_tokens"] == 5050  # message_start said so
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 3000
    assert 1 <= attrs["gen_ai.usage.output_tokens"] < 120


def test_sdk_span_gets_consumer(recorded: Recorded, fake: FakeLLM) -> None:
    """The SDK's own GenAI span dedupes with ours only under the same consumer."""
    sdk = client(fake, open_telemetry={"tracer_provider": recorded.provider})
    with consumer("acme", feature="summarize"):
        sdk.messages.create(model="claude-sonnet-4-20250514", max_tokens=10, messages=MESSAGES)
    spans = recorded.exporter.get_finished_spans()
    others = [s for s in spans if s.instrumentation_scope.name != "meterline.instrumentation"]
    if not others:
        pytest.skip("this anthropic SDK emits no spans of its own")
    for span in spans:
        attrs = span.attributes or {}
        if "gen_ai.operation.name" in attrs:
            assert attrs["meterline.consumer.id"] == "acme"
            assert attrs["meterline.feature"] == "summarize"
    # The SDK's span encloses ours: marked superseded, so the store counts the call once.
    assert [s.attributes.get("meterline.superseded") for s in others] == [True]
    ours = recorded.spans()[0]
    assert ours.parent is not None and ours.parent.span_id == others[0].context.span_id


def test_error_status_reaches_the_app_unchanged(recorded: Recorded) -> None:
    def call() -> str:
        try:
            client(FakeLLM(fail=[500, 500, 500, 500])).messages.create(
                model="claude-sonnet-4-20250514", max_tokens=10, messages=MESSAGES
            )
        except anthropic.InternalServerError as exc:
            return f"{exc.status_code} {exc.body}"
        return "no error"

    assert call() == "500 {'error': {'type': 'api_error', 'message': 'try again'}}"
    assert [s.attributes["error.type"] for s in recorded.spans()] == ["500"] * 3

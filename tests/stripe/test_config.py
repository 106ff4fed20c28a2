"""The ``stripe:`` section: the issue's example, strictness, and the consumer mapping."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.stripe import (
    StripeConfigError,
    customer_for,
    load_stripe_config,
    parse_stripe_config,
    set_customer,
)
from meterline.settings import ServerSettings
from meterline.store import Store

ISSUE_EXAMPLE = """
stripe:
  customers: {acme: cus_123, globex: cus_456}
  window: hour                 # hour or day
  grace: 1h                    # a window closes at its end plus grace
  sync_interval: 15m           # the scheduler inside `meterline serve`; absent: off
  unpriced: hold               # hold (default) or send (token meters only)
  meters:
    - event_name: llm_input_tokens
      value: tokens
      token_types: [input, cache_read, cache_write, cache_write_1h]
    - event_name: llm_output_tokens
      value: tokens
      token_types: [output, reasoning]
    - event_name: llm_cost
      value: cost              # what the consumer is billed, plan markup included
      unit: "0.000001"         # the value sent is cost / unit, rounded half-up per window
"""


def test_public_api_is_pinned() -> None:
    from meterline.aggregator import stripe

    assert {"StripeConfig", "MeterConfig", "customer_for", "CustomerMap"} <= set(stripe.__all__)


def test_issue_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "meterline.yaml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_stripe_config(path)
    assert config is not None
    assert config.customers == {"acme": "cus_123", "globex": "cus_456"}
    assert (config.window, config.grace, config.sync_interval) == (
        "hour", timedelta(hours=1), timedelta(minutes=15)
    )  # fmt: skip
    assert config.unpriced == "hold"
    assert [m.event_name for m in config.meters] == [
        "llm_input_tokens", "llm_output_tokens", "llm_cost"
    ]  # fmt: skip
    cost = config.meter("llm_cost")
    assert cost.value == "cost" and cost.unit == Decimal("0.000001")
    assert config.meter("llm_output_tokens").token_types == ("output", "reasoning")


def test_defaults_and_absent_section() -> None:
    assert parse_stripe_config({"models": []}) is None
    config = parse_stripe_config({"stripe": {}})
    assert config is not None
    assert (config.window, config.grace, config.sync_interval, config.unpriced) == (
        "hour", timedelta(hours=1), None, "hold"
    )  # fmt: skip


def _section(**stripe: object) -> dict[str, object]:
    return {"stripe": stripe}


TOKENS = {"event_name": "t", "value": "tokens", "token_types": ["input"]}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (_section(windows="hour"), "stripe.windows: unknown key"),
        (_section(window="week"), "stripe.window"),
        (_section(grace="an hour"), "not a duration"),
        (_section(grace=3600), "not a duration"),
        (_section(unpriced="drop"), "stripe.unpriced"),
        (_section(customers={"acme": "acme"}), "not a Stripe customer id"),
        (_section(meters=[{**TOKENS, "colour": "red"}]), "stripe.meters[0].colour: unknown key"),
        (_section(meters=[{"value": "tokens", "token_types": ["input"]}]), "event_name"),
        (_section(meters=[{"event_name": "t", "value": "tokens"}]), "needs token_types"),
        (_section(meters=[{**TOKENS, "token_types": ["inputs"]}]), "token_types"),
        (_section(meters=[{"event_name": "c", "value": "cost"}]), "needs unit"),
        (_section(meters=[{"event_name": "c", "value": "cost", "unit": 0.01}]), "quoted decimal"),
        (_section(meters=[{"event_name": "c", "value": "cost", "unit": "0"}]), "above 0"),
        (_section(meters=[{**TOKENS, "unit": "1"}]), "cost meters only"),
        (_section(meters=[TOKENS, TOKENS]), "appears twice"),
        (_section(meters=[{**TOKENS, "event_name": "x" * 101}]), "event_name"),
        (_section(sync_interval="1s"), "at least 10s"),
        ({"stripe": ["hour"]}, "expected a mapping"),
    ],
)
def test_invalid_sections_are_errors(section: dict[str, object], message: str) -> None:
    with pytest.raises(StripeConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_stripe_config(section)


def test_filters_select_rows() -> None:
    config = parse_stripe_config(
        _section(meters=[{**TOKENS, "providers": "openai", "models": ["gpt-4o"]}])
    )
    assert config is not None
    meter = config.meters[0]
    row = {"token_type": "input", "provider": "openai", "model": "gpt-4o", "feature": "chat"}
    assert meter.counts(**row)
    assert not meter.counts(**{**row, "model": "gpt-4o-mini"})
    assert not meter.counts(**{**row, "provider": "anthropic"})
    assert not meter.counts(**{**row, "token_type": "output"})


def test_api_assignment_wins_over_the_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "meterline.yaml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_stripe_config(path)
    assert customer_for(store, config, "acme") == "cus_123"
    assert customer_for(store, config, "initech") is None
    set_customer(store, "acme", "cus_999")
    assert customer_for(store, config, "acme") == "cus_999"
    set_customer(store, "acme", None)
    assert customer_for(store, config, "acme") == "cus_123"
    with pytest.raises(ValueError, match="not a Stripe customer id"):
        set_customer(store, "acme", "customer-1")


def test_put_consumer_route(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "meterline.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(ISSUE_EXAMPLE)))
    client = TestClient(create_app(ServerSettings(config=path, admin_key="k"), store))
    body = {"stripe_customer_id": "cus_777"}
    assert client.put("/v1/consumers/initech", json=body).status_code == 401
    client.headers["authorization"] = "Bearer k"
    assert client.get("/v1/consumers/acme").json() == {
        "consumer": "acme", "stripe_customer_id": "cus_123", "source": "config"
    }  # fmt: skip
    got = client.put("/v1/consumers/initech", json=body)
    assert got.status_code == 200, got.text
    assert got.json() == {"consumer": "initech", "stripe_customer_id": "cus_777", "source": "api",
                          "warnings": got.json()["warnings"]}  # fmt: skip
    assert len(got.json()["warnings"]) == 2  # no key to check it with; no usage of initech
    assert client.put("/v1/consumers/acme", json={"stripe_customer_id": "nope"}).status_code == 422
    assert client.put("/v1/consumers/acme", json={"customer": "cus_1"}).status_code == 422
    assert (
        client.put("/v1/consumers/initech", json={"stripe_customer_id": None}).json()[
            "stripe_customer_id"
        ]
        is None
    )


def test_the_whole_file_model_declares_the_section(tmp_path: Path) -> None:
    from meterline.config import ConfigError, load_config

    path = tmp_path / "meterline.yaml"
    path.write_text(ISSUE_EXAMPLE)
    assert load_config(path).stripe.window == "hour"
    path.write_text(ISSUE_EXAMPLE.replace("value: cost ", "value: money "))
    with pytest.raises(ConfigError, match="value"):
        load_config(path)
    path.write_text(ISSUE_EXAMPLE.replace("window: hour", "windw: hour"))
    with pytest.raises(ConfigError, match="windw"):
        load_config(path)

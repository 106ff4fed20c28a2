"""The budget guard: reserve a call's worst case before it is sent, settle it after.

Contract (``METERLINE_BUDGETS=enforce``; the server side is docs/budgets.md):

* Before an LLM request of an attributed consumer is sent, ``POST /v1/reservations``
  with the input estimate (:func:`input_estimate`) and the request's output cap. Allowed:
  the call goes, its span carries ``meterline.budget.reservation_id``, and when it ends
  the reservation is settled with the metered usage (a stream cut short: the estimate
  meterline records, ``estimated: true``) or released (the call failed without usage).
* Refused: by the budget's policy — ``block`` raises :class:`meterline.BudgetExceeded`;
  ``degrade`` rewrites the request (the cheaper model first, then the output cap the
  server says still fits) and asks again; ``checkpoint`` asks the user's callback;
  ``rate_limited`` raises :class:`meterline.RateLimited` or, when the waits add up to at
  most ``METERLINE_RATE_LIMIT_WAIT`` seconds, waits ``retry_after`` and asks again
  (``retry_after: null`` — the call alone exceeds the limit — is raised at once).
  At most ``MAX_ASKS`` reserves per call.
* The aggregator unreachable, slow (``METERLINE_BUDGETS_TIMEOUT``), answering 5xx/4xx or
  garbage: fail open (the call goes, one warning per minute) or, with
  ``METERLINE_BUDGETS_FAIL=closed``, ``BudgetExceeded`` with the reason. Nothing else is
  ever raised: an error of the guard itself is handled the same way.

The cache, and why it never lets concurrent calls overshoot: an answer that reserved
nothing (``id: null``: no budget and no rate limit applies to the consumer and feature)
is reused for the server's ``cache_ttl_seconds``: such calls cost no round trip, and no
limit can be passed by them. A call under a budget is admitted by its own reservation or,
far from every limit, from a lease (:mod:`._lease`: a reservation of a slice of headroom
this process spends down locally, no round trip; ``METERLINE_BUDGETS_LEASE=off`` turns
them off); the aggregator checks and inserts both atomically, so whatever the number of
threads, processes and replicas, spend + reservations stay within every hard limit. A
budget created while an answer is cached is enforced at most ``cache_ttl_seconds``
later; one changed while a lease is held, at the lease's next report or use window end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from meterline.errors import BudgetExceeded, RateLimited
from meterline.instrumentation.budgets import _checkpoint
from meterline.instrumentation.budgets._client import ReservationClient, Unavailable
from meterline.instrumentation.budgets._lease import Leases
from meterline.instrumentation.budgets._outbox import OUTBOX
from meterline.instrumentation.budgets._rewrite import can_switch_model, encode, rewrite
from meterline.instrumentation.budgets._surface import surfacing

logger = logging.getLogger(__name__)

ENV_MODE = "METERLINE_BUDGETS"
ENV_FAIL = "METERLINE_BUDGETS_FAIL"
ENV_TIMEOUT = "METERLINE_BUDGETS_TIMEOUT"
ENV_TTL = "METERLINE_BUDGETS_TTL"
ENV_RATE_WAIT = "METERLINE_RATE_LIMIT_WAIT"
ENV_LEASE = "METERLINE_BUDGETS_LEASE"
ENV_URL = "METERLINE_API_URL"
ENV_KEY = "METERLINE_API_KEY"

MAX_ASKS = 4
DOWN_SECONDS = 5.0
"""After the aggregator did not answer (refused, reset, timed out), calls fail open or
closed at once for this long instead of each waiting for it."""
DEFAULT_TIMEOUT = 5.0
WARN_EVERY = 60.0
CHARS_PER_TOKEN_BOUND = 3
INPUT_MARGIN = 1.15
"""Reserved input = ceil(counted × INPUT_MARGIN) + INPUT_SLACK (see :func:`input_estimate`)."""
INPUT_SLACK = 8
_MAX_CACHE = 4096


_APIS = {
    "ChatCompletions": "chat",
    "Completions": "completions",
    "Responses": "responses",
    "Embeddings": "embeddings",
    "Messages": "messages",
    "GenerateContent": "gemini",
}
_MAX_COUNT = 1 << 20


def input_estimate(shape: Any, provider: str, model: str | None, raw: bytes) -> int:
    """The input tokens to reserve for the request body ``raw``.

    :func:`meterline.instrumentation.tokens.count_input_tokens`: exact for OpenAI models
    with ``bpe-openai`` installed, else a calibrated estimate that errs high (see
    docs/estimate.md) — times :data:`INPUT_MARGIN` plus :data:`INPUT_SLACK`: the actual
    usage replaces the reservation, and an input counted low would let that actual pass
    a hard limit (an exact text count can still miss the provider's framing by a few
    tokens; the simulator's heuristic counts ~12 % more than ``o200k_base`` on short
    chats). A body over 1 MiB or not a JSON object: ``ceil(bytes / 3)``, an
    over-estimate for prose (~4 characters a token plus the JSON framing) that is near
    1x for UTF-8 CJK text.
    """
    if len(raw) <= _MAX_COUNT:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            from meterline.instrumentation.tokens import count_input_tokens

            tokens, _exact = count_input_tokens(
                provider, model or "", body, api=_APIS.get(type(shape).__name__)
            )
            return math.ceil(tokens * INPUT_MARGIN) + INPUT_SLACK
    return -(-len(raw) // CHARS_PER_TOKEN_BOUND)


@dataclass(frozen=True)
class GuardConfig:
    url: str
    key: str | None
    fail_closed: bool = False
    timeout: float = DEFAULT_TIMEOUT
    ttl_seconds: int | None = None
    rate_limit_wait: float = 0.0
    lease: bool = True
    """Ask for leases (``METERLINE_BUDGETS_LEASE=off`` reserves every call)."""

    @classmethod
    def from_env(cls, env: Any = os.environ) -> GuardConfig | None:
        """The guard's settings, or None when ``METERLINE_BUDGETS`` is not ``enforce``.

        A bad value is reported (one warning) and its default used: instrumenting must
        not fail the app.
        """
        mode = (env.get(ENV_MODE) or "").strip().lower()
        if mode in ("", "off", "0", "false", "no"):
            return None
        if mode != "enforce":
            logger.warning(
                "meterline: %s=%r is not 'enforce' or 'off': budgets are off", ENV_MODE, mode
            )
            return None
        url = (env.get(ENV_URL) or "").strip()
        if not url:
            logger.warning(
                "meterline: %s=enforce needs %s (the aggregator's URL): budgets are off",
                ENV_MODE, ENV_URL,
            )  # fmt: skip
            return None
        fail = (env.get(ENV_FAIL) or "open").strip().lower()
        if fail not in ("open", "closed"):
            logger.warning("meterline: %s=%r is not 'open' or 'closed': using open", ENV_FAIL, fail)
            fail = "open"
        lease = (env.get(ENV_LEASE) or "on").strip().lower()
        if lease not in ("on", "off"):
            logger.warning("meterline: %s=%r is not 'on' or 'off': using on", ENV_LEASE, lease)
            lease = "on"
        return cls(
            url=url,
            lease=lease == "on",
            key=env.get(ENV_KEY) or None,
            fail_closed=fail == "closed",
            timeout=_number(env, ENV_TIMEOUT, DEFAULT_TIMEOUT, low=0.001),
            ttl_seconds=int(_number(env, ENV_TTL, 0, low=0)) or None,
            rate_limit_wait=_number(env, ENV_RATE_WAIT, 0.0, low=0.0),
        )


def _number(env: Any, name: str, default: float, *, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low:
        logger.warning("meterline: %s=%r is not a number >= %g: using %g", name, raw, low, default)
        return default
    return value


@dataclass
class Ask:
    """One LLM request as the guard sees it."""

    shape: Any
    provider: str
    consumer: str
    feature: str | None
    model: str | None
    max_tokens: int | None
    raw: bytes
    """The request body as it will be sent."""
    input_tokens: int = 0


@dataclass
class Admission:
    """The guard's answer for a request that may go."""

    reservation_id: str | None
    body: bytes | None = None
    """The rewritten body (degrade / checkpoint), or None: unchanged."""
    model: str | None = None
    max_tokens: int | None = None
    degraded: bool = False


class Guard:
    """Reserves before calls and settles after them (see the module docstring)."""

    def __init__(self, config: GuardConfig, client: ReservationClient | None = None) -> None:
        self.config = config
        self.client = client or ReservationClient(config.url, config.key, timeout=config.timeout)
        self._cache: dict[tuple[str, str | None], float] = {}
        self._warned_at = -math.inf
        self._down_until = -math.inf
        self._down_reason = ""
        self._warn_lock = threading.Lock()
        self.leases = Leases(self._send, OUTBOX.put) if config.lease else None

    # -- before the call ----------------------------------------------------------------

    def cached(self, consumer: str, feature: str | None) -> bool:
        """True when a recent answer said no hard budget applies: no round trip needed."""
        until = self._cache.get((consumer, feature))
        if until is None:
            return False
        if until > time.monotonic():
            return True
        self._cache.pop((consumer, feature), None)
        return False

    def ask(self, prepared: Any) -> Ask:
        """The :class:`Ask` of a prepared request (``_transport.Prepared``)."""
        facts = prepared.facts
        return Ask(
            shape=prepared.shape, provider=prepared.provider, consumer=prepared.consumer_id,
            feature=prepared.feature, model=facts.model, max_tokens=facts.max_tokens,
            raw=prepared.raw,
        )  # fmt: skip

    def admit(self, ask: Ask) -> Admission | None:
        """Reserve for ``ask`` (the app's thread); raises only BudgetExceeded/RateLimited."""
        steps = self._decide(ask)
        try:
            action = next(steps)
            while True:
                kind, arg = action
                if kind == "reserve":
                    result: Any = self._down()
                    if result is None:
                        try:
                            result = self.client.post("/v1/reservations", arg)
                        except Unavailable as exc:
                            result = self._failed(exc)
                else:
                    time.sleep(arg)
                    result = None
                action = steps.send(result)
        except StopIteration as stop:
            return stop.value
        except (BudgetExceeded, RateLimited):
            raise
        except Exception as exc:
            logger.debug("meterline: the budget guard failed", exc_info=True)
            return self._unavailable(ask, f"the guard failed ({exc!r})")

    async def admit_async(self, ask: Ask) -> Admission | None:
        """:meth:`admit` for an async call: round trips run off the event loop."""
        steps = self._decide(ask)
        loop = asyncio.get_running_loop()
        try:
            action = next(steps)
            while True:
                kind, arg = action
                if kind == "reserve":
                    result: Any = self._down()
                    if result is None:
                        try:
                            result = await loop.run_in_executor(
                                None, self.client.post, "/v1/reservations", arg
                            )
                        except Unavailable as exc:
                            result = self._failed(exc)
                else:
                    await asyncio.sleep(arg)
                    result = None
                action = steps.send(result)
        except StopIteration as stop:
            return stop.value
        except (BudgetExceeded, RateLimited):
            raise
        except Exception as exc:
            logger.debug("meterline: the budget guard failed", exc_info=True)
            return self._unavailable(ask, f"the guard failed ({exc!r})")

    def _down(self) -> Unavailable | None:
        """While the aggregator is known down, do not wait for it on every call."""
        if time.monotonic() < self._down_until:
            return Unavailable(f"{self._down_reason} (not asked again for {DOWN_SECONDS:g} s)")
        return None

    def _failed(self, exc: Unavailable) -> Unavailable:
        if exc.down:
            self._down_reason = str(exc)
            self._down_until = time.monotonic() + DOWN_SECONDS
        return exc

    def _decide(self, ask: Ask) -> Generator[tuple[str, Any], Any, Admission | None]:
        """The decision, as a generator yielding its round trips (driven sync or async)."""
        try:
            ask.input_tokens = input_estimate(ask.shape, ask.provider, ask.model, ask.raw)
        except Exception:
            logger.debug("meterline: input estimate failed", exc_info=True)
            ask.input_tokens = -(-len(ask.raw) // CHARS_PER_TOKEN_BOUND)
        leases = self.leases
        key = (ask.consumer, ask.feature, ask.provider, ask.model or "")
        if leases is not None and ask.model:
            rid = leases.take(key, ask.input_tokens, ask.max_tokens)
            if rid is not None:
                return Admission(rid)
        lease = leases is not None and ask.model and ask.max_tokens is not None
        lease = lease and leases.want(key)  # type: ignore[union-attr]
        try:
            return (yield from self._reserve(ask, key if lease else None))
        finally:
            if lease:
                leases.asked(key)  # type: ignore[union-attr]

    def _reserve(
        self, ask: Ask, lease: tuple[str, str | None, str, str] | None
    ) -> Generator[tuple[str, Any], Any, Admission | None]:
        body: dict[str, Any] | None = None
        degraded = False
        waited = 0.0
        for _ in range(MAX_ASKS):
            if not ask.model:
                return self._unavailable(
                    ask, "the request names no model: its cost cannot be checked"
                )
            request = self._reserve_body(ask)
            if lease is not None and body is None:
                request["lease"] = True
            answer = yield ("reserve", request)
            if isinstance(answer, Unavailable):
                return self._unavailable(ask, str(answer))
            try:
                allowed = answer["allowed"]
                if allowed is True:
                    if lease is not None and body is None and "lease" in answer:
                        assert self.leases is not None and ask.max_tokens is not None
                        rid = self.leases.granted(lease, answer, ask.input_tokens, ask.max_tokens)
                        return Admission(rid)
                    return self._allowed(ask, answer, body, degraded)
                if allowed is not False:
                    raise ValueError(f"allowed is {allowed!r}")
                policy = answer.get("policy")
                if policy == "rate_limited":
                    raw_after = answer.get("retry_after")
                    retry_after = None if raw_after is None else _seconds(raw_after)
                    if (
                        retry_after is not None
                        and waited + retry_after <= self.config.rate_limit_wait
                    ):
                        waited += retry_after
                        yield ("sleep", retry_after)
                        continue
                    raise surfacing(RateLimited)(
                        str(answer.get("reason") or "the rate limit is reached"),
                        retry_after=retry_after, consumer=ask.consumer, feature=ask.feature,
                        limit=_object(answer.get("rate_limit")),
                        estimate=_decimal(answer.get("estimate")), unit=answer.get("unit"),
                    )  # fmt: skip
                if policy not in ("degrade", "checkpoint"):
                    raise self._exceeded(ask, answer)
                if body is None:
                    body = json.loads(ask.raw) if ask.raw else None
                    if not isinstance(body, dict):
                        raise self._exceeded(ask, answer, "the request body cannot be rewritten")
                if policy == "degrade":
                    new = self._degraded(ask, answer, body)
                    if new is None:
                        raise self._exceeded(ask, answer)
                    degraded = True
                else:
                    new = self._checkpoint(ask, answer, body)
                    if new is _checkpoint.ALLOW:
                        return Admission(None)
                    degraded = True
                body = new
                self._apply(ask, body)
            except (BudgetExceeded, RateLimited):
                raise
            except Exception as exc:
                logger.debug("meterline: unexpected reservation answer %r", answer, exc_info=True)
                return self._unavailable(ask, f"the aggregator's answer is not understood ({exc})")
        raise surfacing(BudgetExceeded)(
            f"still does not fit after {MAX_ASKS} rewrites", consumer=ask.consumer,
            feature=ask.feature,
        )  # fmt: skip

    def _reserve_body(self, ask: Ask) -> dict[str, Any]:
        return {
            "consumer": ask.consumer,
            "feature": ask.feature,
            "provider": ask.provider,
            "model": ask.model,
            "input_tokens": ask.input_tokens,
            "max_tokens": ask.max_tokens,
            "ttl_seconds": self.config.ttl_seconds,
        }

    def _allowed(
        self, ask: Ask, answer: dict[str, Any], body: dict[str, Any] | None, degraded: bool
    ) -> Admission:
        rid = answer.get("id")
        if rid is not None and not isinstance(rid, str):
            raise ValueError(f"id is {rid!r}")
        ttl = answer.get("cache_ttl_seconds")
        if rid is None and type(ttl) in (int, float) and 0 < ttl <= 3600:
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[(ask.consumer, ask.feature)] = time.monotonic() + float(ttl)
        if body is None:
            return Admission(rid)
        return Admission(rid, ask.raw, ask.model, ask.max_tokens, degraded)

    def _apply(self, ask: Ask, body: dict[str, Any]) -> None:
        ask.raw = encode(body)
        model = body.get("model")
        if isinstance(model, str) and model:
            ask.model = model
        ask.max_tokens = _cap_of(ask.shape, body, ask.max_tokens)
        ask.input_tokens = input_estimate(ask.shape, ask.provider, ask.model, ask.raw)

    def _degraded(
        self, ask: Ask, answer: dict[str, Any], body: dict[str, Any]
    ) -> dict[str, Any] | None:
        degrade = answer.get("degrade")
        if not isinstance(degrade, dict):
            return None
        model = degrade.get("model")
        if isinstance(model, str) and model and model != ask.model and can_switch_model(ask.shape):
            return rewrite(ask.shape, body, model=model)
        cap = degrade.get("max_tokens")
        if type(cap) is int and cap > 0 and (ask.max_tokens is None or cap < ask.max_tokens):
            return rewrite(ask.shape, body, max_tokens=cap)
        return None

    def _checkpoint(self, ask: Ask, answer: dict[str, Any], body: dict[str, Any]) -> Any:
        callback = _checkpoint.current()
        if callback is None:
            raise self._exceeded(
                ask, answer, "a checkpoint budget refused it and no callback is registered"
            )
        info = _checkpoint.Checkpoint(
            consumer=ask.consumer, feature=ask.feature, provider=ask.provider, model=ask.model,
            input_tokens=ask.input_tokens, max_tokens=ask.max_tokens,
            estimate=_decimal(answer.get("estimate")), unit=answer.get("unit"),
            budget=dict(answer.get("budget") or {}), reason=str(answer.get("reason") or ""),
            body=json.loads(ask.raw),
        )  # fmt: skip
        try:
            verdict = callback(info)
        except Exception as exc:
            logger.warning(
                "meterline: the budget checkpoint callback failed: %r", exc, exc_info=True
            )
            raise self._exceeded(ask, answer, f"the checkpoint callback failed ({exc!r})") from None
        if verdict == _checkpoint.ALLOW:
            return _checkpoint.ALLOW
        if isinstance(verdict, dict):
            return verdict
        if verdict != _checkpoint.BLOCK:
            logger.warning("meterline: the checkpoint callback returned %r; blocking", verdict)
        raise self._exceeded(ask, answer, "the checkpoint callback blocked it")

    def _exceeded(
        self, ask: Ask, answer: dict[str, Any], reason: str | None = None
    ) -> BudgetExceeded:
        budget = answer.get("budget")
        budget = budget if isinstance(budget, dict) else None
        get = budget.get if budget else (lambda _k: None)
        return surfacing(BudgetExceeded)(
            reason or str(answer.get("reason") or "the worst case does not fit"),
            consumer=ask.consumer, feature=ask.feature, budget=budget,
            spent=_decimal(get("spent")), reserved=_decimal(get("reserved")),
            estimate=_decimal(answer.get("estimate")), unit=answer.get("unit") or get("unit"),
            policy=answer.get("policy") if isinstance(answer.get("policy"), str) else None,
        )  # fmt: skip

    def _unavailable(self, ask: Ask, reason: str) -> Admission | None:
        if self.config.fail_closed:
            raise surfacing(BudgetExceeded)(
                f"budgets cannot be checked and METERLINE_BUDGETS_FAIL=closed: {reason}",
                consumer=ask.consumer, feature=ask.feature, policy="fail_closed",
            )  # fmt: skip
        now = time.monotonic()
        with self._warn_lock:
            warn = now - self._warned_at >= WARN_EVERY
            if warn:
                self._warned_at = now
        if warn:
            logger.warning(
                "meterline: budgets cannot be checked, calls go unchecked (fail open; "
                "METERLINE_BUDGETS_FAIL=closed refuses them): %s", reason,
            )  # fmt: skip
        return None

    # -- after the call -----------------------------------------------------------------

    def settle(self, rid: str, usage: dict[str, int], *, model: str | None,
               response_id: str | None, estimated: bool) -> None:  # fmt: skip
        if self.leases is not None and self.leases.owner(rid) is not None:
            self.leases.finish(rid, usage, model)
            return
        body = {"usage": usage, "model": model, "response_id": response_id, "estimated": estimated}
        OUTBOX.put(lambda: self._send(f"/v1/reservations/{rid}/settle", body))

    def release(self, rid: str) -> None:
        if self.leases is not None and self.leases.owner(rid) is not None:
            self.leases.finish(rid, None, None)
            return
        OUTBOX.put(lambda: self._send(f"/v1/reservations/{rid}", None))

    def _send(self, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            if body is None:
                return self.client.delete(path)
            return self.client.post(path, body)
        except Unavailable as exc:
            # The reservation then expires on the aggregator (its worst case held till then).
            logger.info("meterline: %s failed (%s); the reservation will expire", path, exc)
            return None


def _cap_of(shape: Any, body: dict[str, Any], default: int | None) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if type(value) is int:
            return value
    config = body.get("generationConfig")
    if isinstance(config, dict) and type(config.get("maxOutputTokens")) is int:
        return config["maxOutputTokens"]
    return default


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"retry_after is {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"retry_after is {value!r}")
    return seconds

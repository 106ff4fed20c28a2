"""Deliver what the spool holds: claim, POST, and settle each file by the collector's answer.

Several spooled requests go in one POST (up to ``max_request_bytes``): an
``ExportTraceServiceRequest`` has one repeated field, so concatenated requests are the
encoding of one request holding all their spans. Per answer (:mod:`.sender`):

* acknowledged → the files are deleted; a ``partial_success`` is logged (rejected count
  and message), never resent;
* rejected (400/413) → each file is retried alone, to isolate the bad one, which is set
  aside as ``….rejected`` (logged as an error); the others are delivered;
* failed → the files go back to the queue and flushing stops (the caller retries later).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from meterline.instrumentation.delivery.sender import OtlpHttpSender, Outcome, Status
from meterline.instrumentation.delivery.spool import REJECTED, Claimed, Spool

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class FlushReport:
    """What one flush did."""

    sent_files: int = 0
    requests: int = 0
    rejected_files: int = 0
    """Files the collector refused as malformed (set aside, not resent)."""
    rejected_spans: int = 0
    """Spans refused inside acknowledged requests (``partial_success``)."""
    failure: Outcome | None = None
    """Why flushing stopped before the queue was empty, if it did."""
    remaining: int = 0
    """Files still queued afterwards."""


def flush_spool(
    spool: Spool,
    sender: OtlpHttpSender,
    *,
    deadline: float | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FlushReport:
    """Deliver queued files until the queue is empty, a POST fails, or ``deadline``.

    Args:
        spool: the queue.
        sender: where to POST.
        deadline: a ``time.monotonic()`` after which no new POST starts (each POST's
            timeout is cut to what is left).
        max_request_bytes: payload bytes per POST.
    """
    report = FlushReport()
    while True:
        left = _left(deadline)
        if left is not None and left <= 0:
            break
        claims = spool.claim(max_bytes=max_request_bytes)
        if not claims:
            break
        outcome = sender.post(b"".join(c.payload for c in claims), timeout=left)
        if outcome.acked:
            _settle_acked(spool, claims, outcome, report)
        elif outcome.status is Status.REJECTED:
            if not _isolate(spool, sender, claims, outcome, report, deadline):
                break
        else:
            spool.release(claims)
            report.failure = outcome
            break
    report.remaining = len(spool.pending())
    return report


def _settle_acked(
    spool: Spool, claims: list[Claimed], outcome: Outcome, report: FlushReport
) -> None:
    spool.ack(claims)
    report.sent_files += len(claims)
    report.requests += 1
    if outcome.rejected_spans:
        report.rejected_spans += outcome.rejected_spans
        logger.warning(
            "meterline: the collector stored a batch of usage but rejected %d span(s) as "
            "invalid (not resent): %s",
            outcome.rejected_spans,
            outcome.message or "no reason given",
        )


def _isolate(
    spool: Spool,
    sender: OtlpHttpSender,
    claims: list[Claimed],
    outcome: Outcome,
    report: FlushReport,
    deadline: float | None,
) -> bool:
    """Resend a refused multi-file request file by file; False if a POST failed."""
    if len(claims) == 1:
        _reject(spool, claims, outcome, sender.endpoint, report)
        return True
    for i, claim in enumerate(claims):
        single = sender.post(claim.payload, timeout=_left(deadline))
        if single.acked:
            _settle_acked(spool, [claim], single, report)
        elif single.status is Status.REJECTED:
            _reject(spool, [claim], single, sender.endpoint, report)
        else:
            spool.release(claims[i:])
            report.failure = single
            return False
    return True


def _reject(
    spool: Spool, claims: list[Claimed], outcome: Outcome, endpoint: str, report: FlushReport
) -> None:
    spool.reject(claims)
    report.rejected_files += len(claims)
    for c in claims:
        logger.error(
            "meterline: the collector at %s refused a batch of usage (%s); it is kept as "
            "%s%s and will not be resent",
            endpoint,
            outcome.describe(),
            spool.directory / c.name,
            REJECTED,
        )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()

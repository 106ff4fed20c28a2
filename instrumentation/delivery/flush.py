"""Deliver what the spool holds: claim, POST, and settle each file by the collector's answer.

This process's open segment is sealed first. Several spooled files go in one POST (up to
``max_request_bytes``): an ``ExportTraceServiceRequest`` has one repeated field, so
concatenated requests are the encoding of one request holding all their spans. Per
answer (:mod:`.sender`):

* acknowledged → the files are deleted; a ``partial_success`` is logged (rejected count
  and message), never resent;
* rejected (400/413) → each file, then each request of a refused file, is retried alone
  to isolate the bad ones, which are set aside as ``….rejected`` (logged as an error);
  the others are delivered;
* failed → the files go back to the queue and flushing stops (the caller retries later).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from meterline.instrumentation.delivery.records import RecordError, to_request
from meterline.instrumentation.delivery.sender import OtlpHttpSender, Outcome, Status
from meterline.instrumentation.delivery.spool import REJECTED, Claimed, Record, Spool

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
    """Sealed files still queued afterwards (live processes' open segments not counted)."""


def flush_spool(
    spool: Spool,
    sender: OtlpHttpSender,
    *,
    deadline: float | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    lock_timeout: float = -1,
) -> FlushReport:
    """Deliver queued files until the queue is empty, a POST fails, or ``deadline``.

    Args:
        spool: the queue.
        sender: where to POST.
        deadline: a ``time.monotonic()`` after which no new POST starts (each POST's
            timeout is cut to what is left).
        max_request_bytes: payload bytes per POST.
        lock_timeout: how long to wait for this process's writer to seal its segment
            (a signal handler passes a bound; unsealed records then wait for the next flush).
    """
    report = FlushReport()
    spool.seal(lock_timeout=lock_timeout)
    while True:
        left = _left(deadline)
        if left is not None and left <= 0:
            break
        claimed = spool.claim(max_bytes=max_request_bytes)
        if not claimed:
            break
        claims, bodies = [], []
        for c in claimed:
            body = _encode(spool, c)
            if body is not None:
                claims.append(c)
                bodies.append(body)
        if not claims:
            continue  # only unreadable records this time: set aside, go on
        outcome = sender.post(b"".join(bodies), timeout=left)
        if outcome.acked:
            _settle_acked(spool, claims, outcome, report)
        elif outcome.status is Status.REJECTED:
            if not _isolate(spool, sender, claims, bodies, outcome, report, deadline):
                break
        else:
            spool.release(claims)
            report.failure = outcome
            break
    report.remaining = spool.queued()
    return report


def _encode(spool: Spool, claim: Claimed) -> bytes | None:
    """A claimed file as one request; a record that cannot be decoded is set aside."""
    try:
        return to_request(claim.records)
    except RecordError:
        pass
    good: list[Record] = []
    for record in claim.records:
        try:
            to_request([record])
            good.append(record)
        except RecordError:
            spool.set_aside(claim, record)
    claim.records = good
    if good:
        return to_request(good)
    spool.ack([claim])  # every record set aside: nothing left to send
    return None


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
    bodies: list[bytes],
    outcome: Outcome,
    report: FlushReport,
    deadline: float | None,
) -> bool:
    """Resend a refused request file by file, a refused file request by request.

    Returns False if a POST failed (what is not settled goes back to the queue).
    """
    for i, claim in enumerate(claims):
        single = outcome
        if len(claims) > 1:
            single = sender.post(bodies[i], timeout=_left(deadline))
            if single.acked:
                _settle_acked(spool, [claim], single, report)
                continue
            if single.status is not Status.REJECTED:
                spool.release(claims[i:])
                report.failure = single
                return False
        if len(claim.records) == 1:
            _reject(spool, [claim], single, sender.endpoint, report)
            continue
        refused: list[tuple[Record, Outcome]] = []
        for record in claim.records:
            one = sender.post(to_request([record]), timeout=_left(deadline))
            if one.status is Status.REJECTED:
                refused.append((record, one))
            elif not one.acked:
                spool.release(claims[i:])  # its acked requests are resent: counted once
                report.failure = one
                return False
            elif one.rejected_spans:
                report.rejected_spans += one.rejected_spans
        if refused:
            kept = spool.write_rejected([r for r, _ in refused])
            report.rejected_files += 1
            for _, why in refused:
                _log_rejected(sender.endpoint, why, kept)
        spool.ack([claim])
        report.sent_files += 1
    return True


def _reject(
    spool: Spool, claims: list[Claimed], outcome: Outcome, endpoint: str, report: FlushReport
) -> None:
    spool.reject(claims)
    report.rejected_files += len(claims)
    for c in claims:
        _log_rejected(endpoint, outcome, spool.directory / (c.name + REJECTED))


def _log_rejected(endpoint: str, outcome: Outcome, kept: object) -> None:
    logger.error(
        "meterline: the collector at %s refused a batch of usage (%s); it is kept as %s "
        "and will not be resent",
        endpoint,
        outcome.describe(),
        kept,
    )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()

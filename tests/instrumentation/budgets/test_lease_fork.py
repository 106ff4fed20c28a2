"""A forked child never spends its parent's lease (two processes on one slice could pass
the limit together): the child's guard holds no lease, the parent keeps its own."""

from __future__ import annotations

import os

import pytest

from meterline.instrumentation.budgets._lease import Leases

ANSWER = {
    "id": "lse_test.1",
    "lease": {
        "id": "lse_test", "money": "1", "tokens": None, "max_input_tokens": None,
        "prices": {"input": "0.000001", "output": "0.000002"}, "use_seconds": 60,
    },
}  # fmt: skip
KEY = ("c", None, "openai", "gpt-4o")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_drops_the_parent_s_leases():
    sent: list[str] = []
    leases = Leases(lambda path, body: sent.append(path) or {}, lambda job: None)
    assert leases.granted(KEY, ANSWER, 10, 10) == "lse_test.1"
    assert leases.take(KEY, 10, 10) == "lse_test.2"
    pid = os.fork()
    if pid == 0:  # the child: no lease, so its calls reserve on the aggregator
        os._exit(0 if leases.take(KEY, 10, 10) is None and leases.owner("lse_test.1") is None
                 else 1)  # fmt: skip
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert leases.take(KEY, 10, 10) == "lse_test.3"  # the parent still spends it


def test_the_local_balance_bounds_what_is_admitted():
    leases = Leases(lambda path, body: {}, lambda job: None)
    # worst case of (10 in, 10 out) = 10 × 0.000001 + 10 × 0.000002 = 0.00003; balance 1
    leases.granted(KEY, ANSWER, 10, 10)
    admitted = 1
    while leases.take(KEY, 10, 10) is not None:
        admitted += 1
    assert admitted == 33333  # 1 / 0.00003, never one more
    assert leases.take(KEY, 10, 10) is None  # retired once a call did not fit

"""``meterline demo``: the whole product on one machine, against a simulated provider.

:mod:`meterline.demo.sample_app` is a small app using the real ``openai`` and
``anthropic`` SDKs for a few consumers and features; :mod:`meterline.demo.runner` starts
``meterline serve`` and the provider simulator, runs the sample app under the zero-code
instrumentation (``meterline instrument``), waits until every response the simulator
returned has been metered, and prints each consumer's bill from the invoice API
(:mod:`meterline.demo.bill`) and, while serving, checked links (:mod:`meterline.demo.links`).
"""

from __future__ import annotations

from meterline.demo.runner import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]

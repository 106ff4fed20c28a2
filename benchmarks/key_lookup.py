"""Benchmark: what authenticating a consumer key costs a request.

Times, in one run over the embedded engine with ``--keys`` stored keys:

- the store lookup (``SELECT … FROM api_keys FINAL WHERE KeyHash = …``, the baseline):
  paid at most once per key per :data:`~meterline.aggregator.auth.KEY_CACHE_SECONDS`
  and after every create or revoke in the process;
- the cached lookup every other request pays (SHA-256 of the key and a dict hit).

Run: ``.venv/bin/python benchmarks/key_lookup.py --keys 1000``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable

from meterline.aggregator.auth import KeyCache
from meterline.aggregator.keys import create_key, find_key
from meterline.store import open_store


def per_call_us(f: Callable[[], object], n: int) -> float:
    f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="meterline-keys-")
    try:
        store = open_store(data_dir=directory)
        store.migrate()
        for i in range(args.keys - 1):
            create_key(store, consumer=f"c{i}")
        _, secret = create_key(store, consumer="acme")
        stored = per_call_us(lambda: find_key(store, secret), args.repeat)
        cache = KeyCache(store)
        cached = per_call_us(lambda: cache.lookup(secret), args.repeat * 100)
        print(f"{args.keys} keys: store lookup {stored:.0f} µs (baseline), "
              f"cached {cached:.1f} µs = {cached / stored:.4f}x")  # fmt: skip
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

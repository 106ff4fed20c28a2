"""Reservations shared by several aggregator replicas: Redis, one Lua script per step.

Redis runs one script at a time, so each script is atomic across every replica:
:data:`RESERVE` drops the consumer's ended reservations, sums the live ones of each
budget that applies, and adds the new one only when every hard budget still fits;
:data:`SETTLE`, :data:`RELEASE` and :data:`MARK_COUNTED` change one state each.

Representation: one hash per consumer (``<prefix>:<consumer>``), field = reservation id,
value ``status|units|tokens|created_us|expires_us|counted_us|has_feature|<json>`` where
the JSON is ``[provider, model, feature]`` (any text, decoded by the script's cjson).
Lua numbers are doubles, exact for integers below 2**53, so money travels as integer
*units* of 10**-8 of the currency (:data:`SCALE`): a reservation is rounded **up**, the
room left (``limit - spent``) **down** — the check can only be more cautious than the
exact one, by less than 10**-8 per reservation. A room of 2**53 units or more (a limit
above ~9·10**7 currency units, or 9·10**15 tokens) is passed as 2**53 - 1 (:func:`exact`):
a larger integer would be rounded by Lua, possibly up, and let a reservation pass the
limit by a unit. So in Redis mode the live reservations of one budget (and one call) may
hold at most that much; beyond it a hard budget refuses — cautious, never over. The exact
amounts stay in the store table (``budget_reservations``).

Rate limits (:mod:`._rates`): a second hash per consumer (``<prefix>:rate:<consumer>``)
keeps the last hour's reservations under a rate limit (``created_us|units|tokens|<json>``);
:data:`RESERVE` sums each limit's sliding window from it after the budgets fit, and adds
the candidate to both hashes only when every window has room. Settle rewrites the entry's
amounts, release deletes it; entries older than the longest window are dropped.

Counted reservations (their span is stored): the replica that finds them marks them with
Redis's clock *after* its store read; a replica excludes a reservation from its sums only
when its own snapshot was taken after that mark (so its spend includes the call), and the
mark is removed ``COUNTED_KEEP_US`` later. Times are Redis's own (``TIME``), one clock for
every replica.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from meterline.aggregator.budgets._ledger import (
    Check,
    Ledger,
    LedgerUnavailable,
    Reservation,
    Snapshot,
    Totals,
)
from meterline.aggregator.budgets._rates import LONGEST, RATE_TOKENS, REQUESTS, Entry, RateCheck
from meterline.store import Store

SCALE = 8
UNIT = Decimal(10) ** SCALE
COUNTED_KEEP_US = 60_000_000
"""How long a counted reservation's mark stays (longer than any snapshot is used)."""

_PARSE = """
local function parse(rec)
  local f = {}
  local start = 1
  for i = 1, 7 do
    local stop = string.find(rec, '|', start, true)
    f[i] = string.sub(rec, start, stop - 1)
    start = stop + 1
  end
  f[8] = string.sub(rec, start)
  local meta = cjson.decode(f[8])
  local feat = meta[3]
  if type(feat) ~= 'string' then feat = '' end
  return f[1], tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), tonumber(f[5]),
         tonumber(f[6]), f[7], feat, f
end
-- numbers are rebuilt from the fields' own text: tostring() of a large one is "1.7e+15"
local function join(f)
  return table.concat(f, '|')
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

RESERVE = (
    _PARSE
    + """
-- KEYS[1] the consumer's hash, KEYS[2] id -> consumer; ARGV: snap_us, settled_keep_us,
-- id ('' = totals only), record, n, then per budget: has_feature, feature, start_us,
-- end_us, in_tokens, cap ('' = not enforced), amount; then the consumer, and the
-- caller's clock (expiry is the app servers' time, the counted marks Redis's)
local now = tonumber(ARGV[#ARGV])
local rnow = now_us()
local snap = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local n = tonumber(ARGV[5])
local used, settled, b = {}, {}, {}
for i = 1, n do
  local o = 5 + (i - 1) * 7
  b[i] = {ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]),
          ARGV[o + 5] == '1', ARGV[o + 6], tonumber(ARGV[o + 7])}
  used[i] = 0
  settled[i] = 0
end
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local status, units, tokens, created, expires, counted, hasf, feat = parse(all[j + 1])
  if (status == 'reserved' and expires <= now) or (status == 'settled' and expires + keep <= now)
     or (counted > 0 and counted + COUNTED_KEEP <= rnow) then
    redis.call('HDEL', KEYS[1], all[j])
    redis.call('HDEL', KEYS[2], all[j])
  elseif counted > 0 and counted <= snap then
    -- the snapshot's spend has this call
  else
    for i = 1, n do
      local bi = b[i]
      local scoped = bi[1] == '0' or (hasf == '1' and feat == bi[2])
      if created >= bi[3] and created < bi[4] and scoped then
        local v = units
        if bi[5] then v = tokens end
        used[i] = used[i] + v
        if status == 'settled' then settled[i] = settled[i] + v end
      end
    end
  end
end
local out = {0}
-- rate limits: ARGV[ro] = m, then per limit provider, model, window_us, kind (r|t|m),
-- cap, amount; then the candidate's rate record (sliding windows ending now)
local ro = 6 + n * 7
local m = tonumber(ARGV[ro])
local rate_block, retry = 0, -1
local rate_used = {}
if ARGV[3] ~= '' then
  for i = 1, n do
    if b[i][6] ~= '' and used[i] + b[i][7] > tonumber(b[i][6]) then
      out[1] = i
      break
    end
  end
  if out[1] == 0 and m > 0 then
    -- the windows end at the candidate's own instant (see _rates.window_use)
    local crec = ARGV[ro + m * 6 + 1]
    now = tonumber(string.sub(crec, 1, string.find(crec, '|', 1, true) - 1))
    local entries = {}
    local rall = redis.call('HGETALL', KEYS[3])
    for j = 1, #rall, 2 do
      local rec = rall[j + 1]
      local p1 = string.find(rec, '|', 1, true)
      local p2 = string.find(rec, '|', p1 + 1, true)
      local p3 = string.find(rec, '|', p2 + 1, true)
      local created = tonumber(string.sub(rec, 1, p1 - 1))
      if created <= now - LONGEST then
        redis.call('HDEL', KEYS[3], rall[j])
      else
        local meta = cjson.decode(string.sub(rec, p3 + 1))
        entries[#entries + 1] = {created, tonumber(string.sub(rec, p1 + 1, p2 - 1)),
                                 tonumber(string.sub(rec, p2 + 1, p3 - 1)), meta[1], meta[2]}
      end
    end
    table.sort(entries, function(x, y) return x[1] < y[1] end)
    for i = 1, m do
      local o = ro + (i - 1) * 6
      local prov, model, win, kind = ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3]), ARGV[o + 4]
      local cap, amount = tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6])
      local total, inside = 0, {}
      for _, e in ipairs(entries) do
        if e[1] > now - win and (prov == '' or prov == e[4]) and (model == '' or model == e[5]) then
          local v = 1
          if kind == 't' then v = e[3] elseif kind == 'm' then v = e[2] end
          total = total + v
          inside[#inside + 1] = {e[1], v}
        end
      end
      rate_used[i] = total
      if total + amount > cap then
        rate_block = i
        if amount <= cap then
          local left = total
          for _, x in ipairs(inside) do
            left = left - x[2]
            if left + amount <= cap then
              retry = x[1] + win - now
              break
            end
          end
        end
        break
      end
    end
  end
  if out[1] == 0 and rate_block == 0 then
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
    redis.call('HSET', KEYS[2], ARGV[3], ARGV[#ARGV - 1])
    if m > 0 then redis.call('HSET', KEYS[3], ARGV[3], ARGV[ro + m * 6 + 1]) end
    for i = 1, n do used[i] = used[i] + b[i][7] end
  end
end
for i = 1, n do
  out[#out + 1] = used[i]
  out[#out + 1] = settled[i]
end
out[#out + 1] = rate_block
out[#out + 1] = retry
for i = 1, #rate_used do out[#out + 1] = rate_used[i] end
return out
""".replace("COUNTED_KEEP", str(COUNTED_KEEP_US)).replace(
        "LONGEST", str(int(LONGEST.total_seconds() * 1_000_000))
    )
)

SETTLE = (
    _PARSE
    + """
-- KEYS[1] hash, KEYS[2] rate windows; ARGV: id, units, tokens, meta. Returns the status
-- before ('' if absent).
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return '' end
local status, units, tokens, created, expires, counted, hasf, feat, f = parse(rec)
if counted > 0 then return 'counted' end
if status ~= 'reserved' then return status end
f[1], f[2], f[3], f[8] = 'settled', ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', KEYS[1], ARGV[1], join(f))
local rate = redis.call('HGET', KEYS[2], ARGV[1])
if rate then
  local p1 = string.find(rate, '|', 1, true)
  redis.call('HSET', KEYS[2], ARGV[1], table.concat(
    {string.sub(rate, 1, p1 - 1), ARGV[2], ARGV[3], ARGV[4]}, '|'))
end
return status
"""
)

RELEASE = (
    _PARSE
    + """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return '' end
local status, units, tokens, created, expires, counted = parse(rec)
if counted > 0 then return 'counted' end
if status == 'reserved' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])  -- the call was not sent: out of the rate windows
end
return status
"""
)

MARK_COUNTED = (
    _PARSE
    + """
-- KEYS[1] hash; ARGV: ids. Marks them counted now (Redis's clock, after the store read).
local marked = 0
for i = 1, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    local status, units, tokens, created, expires, counted, hasf, feat, f = parse(rec)
    if counted == 0 then
      local t = redis.call('TIME')
      f[6] = t[1] .. string.format('%06d', tonumber(t[2]))
      redis.call('HSET', KEYS[1], ARGV[i], join(f))
      marked = marked + 1
    end
  end
end
return marked
"""
)

REPORT = (
    _PARSE
    + """
-- KEYS[1] the consumer's hash, KEYS[2] id -> consumer, KEYS[3] the lease's reported call
-- ids; ARGV: lease id, seconds to keep KEYS[3], consumer, then per call: id, record,
-- units, tokens. Adds each call not reported before as a settled reservation and shrinks
-- the lease by it (not below 0). Returns {status of the lease ('' absent), added ids...}.
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return {''} end
local status, units, tokens, created, expires, counted, hasf, feat, f = parse(rec)
if counted > 0 then return {'counted'} end
if status ~= 'reserved' then return {status} end
local out = {'reserved'}
for i = 4, #ARGV, 4 do
  if redis.call('SADD', KEYS[3], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[3])
    units = math.max(0, units - tonumber(ARGV[i + 2]))
    tokens = math.max(0, tokens - tonumber(ARGV[i + 3]))
    out[#out + 1] = ARGV[i]
  end
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
if #out > 1 then
  f[2], f[3] = string.format('%.0f', units), string.format('%.0f', tokens)
  redis.call('HSET', KEYS[1], ARGV[1], join(f))
end
return out
"""
)


def units(amount: Decimal | None) -> int:
    """Money → integer units, rounded up (a reservation never looks smaller)."""
    if amount is None:
        return 0
    return int((amount * UNIT).to_integral_value(ROUND_CEILING))


def room(amount: Decimal) -> int:
    """Room left → integer units, rounded down (the limit never looks larger)."""
    return int((amount * UNIT).to_integral_value(ROUND_FLOOR))


EXACT = 2**53 - 1
"""The largest integer every Lua number (a double) holds exactly, and its neighbours too."""


def exact(cap: int) -> int:
    """A room as the script may compare it: at most :data:`EXACT` (never rounded up)."""
    return min(cap, EXACT)


def from_units(value: int) -> Decimal:
    return Decimal(value) / UNIT


def micros(value: Any) -> int:
    return math.floor(value.timestamp() * 1_000_000)


def meta(provider: str, model: str, feature: str | None) -> str:
    return json.dumps([provider, model, feature], separators=(",", ":"))


def record(r: Reservation) -> str:
    return "|".join(
        [r.status, str(units(r.money)), str(r.tokens), str(micros(r.created_at)),
         str(micros(r.expires_at)), "0", "1" if r.feature is not None else "0",
         meta(r.provider, r.model, r.feature)]
    )  # fmt: skip


def rate_record(r: Reservation) -> str:
    """``created_us|units|tokens|<json>``: a reservation as the rate windows see it."""
    return "|".join([str(micros(r.created_at)), str(units(r.money)), str(r.tokens),
                     meta(r.provider, r.model, r.feature)])  # fmt: skip


def _rate_args(rc: RateCheck) -> list[Any]:
    limit = rc.limit
    kind = "r" if limit.unit == REQUESTS else "t" if limit.unit == RATE_TOKENS else "m"
    if kind == "m":
        cap, amount = exact(room(limit.limit)), units(rc.amount)
    else:
        cap, amount = exact(int(limit.limit)), int(rc.amount)
    window = int(limit.window.total_seconds() * 1_000_000)
    return [limit.provider or "", limit.model or "", window, kind, cap, amount]


def parse(consumer: str, rid: str, value: str) -> tuple[Reservation, int]:
    """A record as a :class:`Reservation` (money rounded to units) and its counted mark."""
    status, amount, tokens, created, expires, counted, _has, rest = value.split("|", 7)
    provider, model, feature = json.loads(rest)
    return (
        Reservation(
            id=rid, consumer=consumer, feature=feature, provider=provider, model=model,
            money=from_units(int(amount)), tokens=int(tokens), status=status,  # type: ignore[arg-type]
            created_at=_at(int(created)), expires_at=_at(int(expires)),
        ),
        int(counted),
    )  # fmt: skip


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


class RedisLedger(Ledger):
    """The :class:`Ledger` interface over Redis (see the module docstring). Budget
    snapshots stay per replica; the reservations and their checks are shared."""

    def __init__(self, store: Store, url: str, *, prefix: str = "meterline:rsv", **kw: Any) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._release = self.client.register_script(RELEASE)
        self._mark = self.client.register_script(MARK_COUNTED)
        self._report = self.client.register_script(REPORT)
        super().__init__(store, **kw)

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis

        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"budget reservations: Redis unreachable: {exc}") from None

    def _do(self, method: str, *args: Any) -> Any:
        import redis

        try:
            return getattr(self.client, method)(*args)
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"budget reservations: Redis unreachable: {exc}") from None

    def _load(self) -> None:
        """Nothing to reload: Redis holds the live reservations across restarts."""

    def _key(self, consumer: str) -> str:
        return f"{self.prefix}:{{{consumer}}}"

    def _owner_key(self) -> str:
        return f"{self.prefix}:owners"

    def _redis_now(self) -> int:
        seconds, micro = self._do("time")
        return int(seconds) * 1_000_000 + int(micro)

    def _rate_key(self, consumer: str) -> str:
        return f"{self.prefix}:rate:{{{consumer}}}"

    def rate_entries(self, consumer: str, now: datetime) -> list[Entry]:
        out = []
        for value in self._do("hgetall", self._rate_key(consumer)).values():
            created, amount, tokens, rest = value.split("|", 3)
            provider, model, _feature = json.loads(rest)
            out.append(Entry(_at(int(created)), provider, model, int(tokens),
                             from_units(int(amount))))  # fmt: skip
        return out

    def reserve(
        self,
        consumer: str,
        checks: list[Check],
        candidate: Reservation | None,
        rates: list[RateCheck] | None = None,
    ) -> tuple[Totals, list[Reservation]]:
        rates = rates or []
        snap = self._snapshots.get(consumer)
        taken = getattr(snap, "taken_us", 0)
        args: list[Any] = [taken, int(self.settled_keep.total_seconds() * 1e6)]
        args += [candidate.id, record(candidate)] if candidate is not None else ["", ""]
        args.append(len(checks))
        for c in checks:
            b = c.budget
            cap = "" if c.room is None else str(exact(int(c.room) if b.in_tokens else room(c.room)))
            amount = int(c.amount) if b.in_tokens else units(c.amount)
            args += [
                "1" if b.feature is not None else "0",
                b.feature or "",
                micros(c.start),
                micros(c.end),
                "1" if b.in_tokens else "0",
                cap,
                amount,
            ]
        args.append(len(rates))
        for rc in rates:
            args += _rate_args(rc)
        if rates:
            args.append(rate_record(candidate) if candidate is not None else "")
        args += [consumer, micros(self.clock())]
        keys = [self._key(consumer), self._owner_key(), self._rate_key(consumer)]
        out = self._run(self._reserve, keys, args)
        blocking = int(out[0]) - 1 if int(out[0]) else None
        used, settled = [], []
        for i, c in enumerate(checks):
            u, st = int(out[1 + 2 * i]), int(out[2 + 2 * i])
            if c.budget.in_tokens:
                used.append(Decimal(u))
                settled.append(Decimal(st))
            else:
                used.append(from_units(u))
                settled.append(from_units(st))
        rest = out[1 + 2 * len(checks) :]
        rate_block, retry_us = int(rest[0]), int(rest[1])
        rate_used = tuple(
            from_units(int(v)) if rc.limit.in_money else Decimal(int(v))
            for v, rc in zip(rest[2:], rates, strict=False)
        )
        return Totals(
            blocking, used, settled,
            rate_block - 1 if rate_block else None,
            retry_us / 1_000_000 if rate_block and retry_us >= 0 else None,
            rate_used,
        ), []  # fmt: skip

    def ended_status(self, rid: str, consumer: str | None) -> str | None:
        """As stored, but a reservation still ``reserved`` in the store and no longer in
        Redis has expired: the reserve script drops it without telling the store (or
        Redis lost it, which frees the budget the same way). Before: 404 for a settle of
        an expired reservation, where the contract says ``{"status": "expired"}``."""
        found = self.stored_status(rid)
        if found is None or (consumer is not None and found[1] != consumer):
            return None
        return "expired" if found[0] == "reserved" else found[0]

    def _owner(self, rid: str, consumer: str | None) -> str | None:
        owner = self._do("hget", self._owner_key(), rid)
        if owner is None or (consumer is not None and owner != consumer):
            return None
        return owner

    def _current(self, owner: str, rid: str) -> Reservation | None:
        value = self._do("hget", self._key(owner), rid)
        return None if value is None else parse(owner, rid, value)[0]

    def settle(
        self, rid: str, consumer: str | None, price: Any, model: str | None
    ) -> tuple[str | None, Reservation | None]:
        owner = self._owner(rid, consumer)
        r = self._current(owner, rid) if owner is not None else None
        if r is None:
            return None, None
        used_model = model or r.model
        money, tokens = price(r, used_model)
        before = self._run(
            self._settle,
            [self._key(r.consumer), self._rate_key(r.consumer)],
            [rid, units(money), tokens, meta(r.provider, used_model, r.feature)],
        )
        if before == "":
            return None, None
        if before != "reserved":
            return before, None
        return "settled", replace(r, status="settled", money=money, tokens=tokens,
                                  model=used_model, version=r.version + 1)  # fmt: skip

    def lease(self, rid: str, consumer: str | None) -> Reservation | None:
        owner = self._owner(rid, consumer)
        return self._current(owner, rid) if owner is not None else None

    def report(
        self, lease: Reservation, calls: list[Reservation]
    ) -> tuple[str | None, list[Reservation]]:
        """:meth:`Ledger.report` in one script (the reported ids kept in a set as long as
        the lease and its settled calls can live)."""
        keep = self.settled_keep.total_seconds() + (lease.expires_at - self.clock()).total_seconds()
        args: list[Any] = [lease.id, max(60, math.ceil(keep)), lease.consumer]
        for call in calls:
            args += [call.id, record(call), units(call.money), call.tokens]
        keys = [self._key(lease.consumer), self._owner_key(),
                f"{self.prefix}:lease:{{{lease.consumer}}}:{lease.id}"]  # fmt: skip
        out = self._run(self._report, keys, args)
        status = str(out[0]) or None
        added = set(map(str, out[1:]))
        changed = [c for c in calls if c.id in added]
        if changed:
            money = lease.money
            if money is not None:
                money = max(Decimal(0), money - sum((c.money or Decimal(0)) for c in changed))
            tokens = max(0, lease.tokens - sum(c.tokens for c in changed))
            changed.append(replace(lease, money=money, tokens=tokens, version=lease.version + 1))
        return status, changed

    def release(self, rid: str, consumer: str | None) -> tuple[str | None, Reservation | None]:
        owner = self._owner(rid, consumer)
        r = self._current(owner, rid) if owner is not None else None
        if r is None:
            return None, None
        keys = [self._key(r.consumer), self._owner_key(), self._rate_key(r.consumer)]
        before = self._run(self._release, keys, [rid])
        if before == "":
            return None, None
        if before != "reserved":
            return before, None
        return "released", replace(r, status="released", version=r.version + 1)

    def snapshot(
        self, consumer: str, budgets: Any, read_spent: Any, counted: Any, *, fresh: bool = False
    ) -> tuple[Snapshot, list[Reservation]]:
        keys = [(*b.key, start) for b, start, _ in budgets]
        asked = time.monotonic()
        snap = self._snapshots.get(consumer)
        if not fresh and self._usable(snap, keys, asked - self.snapshot_seconds):
            return snap, []  # type: ignore[return-value]
        with self.lock:
            guard = self._refreshing.setdefault(consumer, threading.Lock())
        with guard:
            snap = self._snapshots.get(consumer)
            if self._usable(snap, keys, asked):
                return snap, []  # type: ignore[return-value]
            taken, taken_us = time.monotonic(), self._redis_now()
            live = [
                parse(consumer, rid, value)
                for rid, value in self._do("hgetall", self._key(consumer)).items()
            ]
            candidates = [r for r, mark in live if mark == 0]
            since = min((r.created_at for r in candidates), default=self.clock())
            stored = counted([r.id for r in candidates], since)
            values = {k: read_spent(b, s, e) for k, (b, s, e) in zip(keys, budgets, strict=True)}
            ended = [replace(r, status="counted", version=r.version + 2)
                     for r in candidates if r.id in stored]  # fmt: skip
            if ended:
                self._run(self._mark, [self._key(consumer)], [r.id for r in ended])
            new = Snapshot(taken, values, taken_us)
            self._snapshots[consumer] = new
            return new, ended

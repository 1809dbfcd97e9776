"""The two sides of the benchmark as the producer (``bench.runner``) sees them: how to enqueue one
payment, how to count finished ones cheaply while a run goes on, and how to collect each payment's
status and recorded time afterwards.

* ``Ours``: ``tasks.sale.delay(...)``; done = the results store's record is final (``updated_ts``).
* ``Baseline``: ``bench.baseline.sale.delay(...)``; done = the result backend's meta (``date_done``).
* ``OursMetricsOff`` (``--metrics-ab``): our worker without metrics, in the baseline's place.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from bench.analysis import FINAL_STATUSES, ROUND_TRIPS

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500",
            "city": "Testville", "state": "IL", "zipcode": "54321", "country": "USA"}
AMOUNT = "3.00"  # odd dollars approve in TEST mode
STORE_PREFIX = "payments:"

#: One collected payment: (status, recorded epoch seconds or None when it never got a final record).
Row = tuple[str, "float | None"]


class Side:
    """One kind of worker (ours or the baseline): how to enqueue, poll and collect its payments."""

    name = ""
    queue = ""
    app_module = ""
    redelivered = 0

    def __init__(self) -> None:
        self.procs: list = []
        self.hostnames: list[str] = []
        self.logs: list = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def enqueue(self, i: int, tag: str) -> Any:
        raise NotImplementedError

    def reset_poll(self, r, own: Counter) -> None:
        raise NotImplementedError

    def done_count(self, pending: Sequence[str], r, own: Counter) -> int:
        raise NotImplementedError

    def collect(self, ids: Sequence[str], r) -> list[Row]:
        raise NotImplementedError


class Ours(Side):
    name, queue, app_module = "ours", "celery", "worker"

    def __init__(self) -> None:
        super().__init__()
        from worker.tasks import sale  # after the environment is set (bench.runner.BenchEnv.setup)

        self.task = sale
        self._base = 0
        self._unconfirmed: list[str] | None = None

    def enqueue(self, i, tag):
        return self.task.delay(amount=AMOUNT, card=CARD, customer=CUSTOMER)

    def _counter(self, r, own) -> int:
        pipe = r.pipeline(transaction=False)
        pipe.zcard(STORE_PREFIX + "idx:time")
        pipe.zcard(STORE_PREFIX + "idx:non_final")
        created, non_final = pipe.execute()
        own["zcard"] += 2
        own[ROUND_TRIPS] += 1
        return int(created) - int(non_final)

    def reset_poll(self, r, own):
        # Records are kept from run to run (a redelivered message of an earlier run must find its
        # final record, as in production), so count from this run's starting point.
        self._base = self._counter(r, own)
        self._unconfirmed = None

    def done_count(self, pending, r, own) -> int:
        """Cheap counter (records created minus non-final ones) until it says all are done; then
        the ids themselves are checked, and only the unfinished ones polled from then on."""
        if self._unconfirmed is None:
            done = self._counter(r, own) - self._base
            if done < len(pending):
                return min(done, len(pending) - 1)
            self._unconfirmed = list(pending)
        still = []
        for chunk in chunks(self._unconfirmed, 500):
            pipe = r.pipeline(transaction=False)
            for pid in chunk:
                pipe.hget(f"{STORE_PREFIX}op:{pid}", "status")
            own["hget"] += len(chunk)
            own[ROUND_TRIPS] += 1
            statuses = pipe.execute()
            still += [pid for pid, status in zip(chunk, statuses, strict=True) if text(status) not in FINAL_STATUSES]
        self._unconfirmed = still
        return len(pending) - len(still)

    def collect(self, ids, r):
        """[(status, recorded_epoch or None)] in the order of ids."""
        out: list[Row] = []
        for chunk in chunks(ids, 500):
            pipe = r.pipeline(transaction=False)
            for pid in chunk:
                pipe.hmget(f"{STORE_PREFIX}op:{pid}", "status", "updated_ts", "attempts")
            for status, updated, attempts in pipe.execute():
                status = text(status)
                if attempts and int(attempts) > 1:
                    self.redelivered += 1  # claimed more than once: the broker delivered it again
                final = status in FINAL_STATUSES
                out.append((status or "MISSING", float(updated) if (updated and final) else None))
        self._what_missing_ones_ended_with(ids, out, r)
        return out

    @staticmethod
    def _what_missing_ones_ended_with(ids, out: list[Row], r) -> None:
        """No record: what did the task itself end with (the result backend's meta)?"""
        missing = [i for i, (status, _) in enumerate(out) if status == "MISSING"]
        if not missing:
            return
        metas = r.mget([f"celery-task-meta-{ids[i]}" for i in missing])
        for i, raw in zip(missing, metas, strict=True):
            if raw:
                meta = json.loads(raw)
                exc = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                out[i] = (f"{meta.get('status')}:{exc.get('exc_type', '')}".rstrip(":"), None)


class OursMetricsOff(Ours):
    """``--metrics-ab``: our worker with WORKER_METRICS_PORT unset, in the baseline's place (its own queue, so the
    two sides of our worker never take each other's messages); "ours" then serves metrics."""

    # "baseline": the role the runner and the report key it by (its workers are ``bench-baseline-...``)
    name, queue = "baseline", "bench-ours-metrics-off"

    def enqueue(self, i, tag):
        return self.task.apply_async(kwargs={"amount": AMOUNT, "card": CARD, "customer": CUSTOMER}, queue=self.queue)


class Baseline(Side):
    name, queue, app_module = "baseline", "bench-baseline", "bench.baseline"

    def __init__(self) -> None:
        super().__init__()
        from bench.baseline import sale

        self.task = sale
        self._checked = 0

    def enqueue(self, i, tag):
        return self.task.delay(AMOUNT, CARD, CUSTOMER, f"bl-{tag}-{i}")

    def done_count(self, pending, r, own) -> int:
        # Completion order is roughly FIFO: check the oldest unconfirmed result keys in batches of
        # 50 with one variadic EXISTS each, and move on while a whole batch exists.
        while self._checked < len(pending):
            batch = pending[self._checked:self._checked + 50]
            own["exists"] += 1
            own[ROUND_TRIPS] += 1
            if r.exists(*[f"celery-task-meta-{t}" for t in batch]) < len(batch):
                break
            self._checked += len(batch)
        return self._checked

    def reset_poll(self, r, own):
        self._checked = 0

    def collect(self, ids, r):
        out: list[Row] = []
        for chunk in chunks(ids, 500):
            for raw in r.mget([f"celery-task-meta-{t}" for t in chunk]):
                if not raw:
                    out.append(("MISSING", None))
                    continue
                meta = json.loads(raw)
                result = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                status = result.get("Result") if meta.get("status") == "SUCCESS" else meta.get("status")
                if result.get("MESSAGE") == "DUPLICATE":
                    status = "DUPLICATE"
                when = meta.get("date_done")
                out.append((status or "UNKNOWN", datetime.fromisoformat(when).timestamp() if when else None))
        return out


def text(v):
    return v.decode() if isinstance(v, (bytes, bytearray)) else v


def chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]

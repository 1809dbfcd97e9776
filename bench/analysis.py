"""Pure helpers of the benchmark: percentiles, medians, Redis command deltas, one run's metrics, a
configuration's medians and ratios, the targets, the headline figures, profile summaries.

Nothing here starts a process or talks to Redis: ``bench.runner`` measures, this module computes.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

__all__ = ["ROUND_TRIPS", "percentile", "median", "spread", "commandstats", "command_delta", "summarize_profile",
           "STAGES", "OK_STATUSES", "FINAL_STATUSES", "run_metrics", "config_summary", "evaluate_targets", "headline"]

OK_STATUSES = ("APPROVED", "DECLINED")
#: The key under which the benchmark counts its own Redis round trips (polling, INFO) in its ``own`` Counter.
ROUND_TRIPS = "(round trips)"
#: Figures whose spread over the runs (min, max) the summary and the table give beside the median.
SPREAD_KEYS = ("per_s", "cpu_ms", "redis_cpu_ms", "redis_cmds", "redis_round_trips")
FINAL_STATUSES = ("APPROVED", "DECLINED", "ERROR", "SKIPPED", "VOIDED", "CAPTURED", "REFUNDED")


def percentile(values, p: float):
    """Nearest-rank percentile (p in 0..100) of ``values``; None when empty."""
    data = sorted(values)
    if not data:
        return None
    k = max(0, min(len(data) - 1, int(-(-p * len(data) // 100)) - 1))
    return data[k]


def median(values):
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def spread(values):
    """[min, max] of the values that are not None (None when there are none)."""
    data = [v for v in values if v is not None]
    return [min(data), max(data)] if data else None


def commandstats(info: dict) -> Counter:
    """``INFO commandstats`` (as redis-py parses it) -> Counter of calls by command name."""
    out: Counter[str] = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key[len("cmdstat_"):]] = int(value.get("calls", 0))
    return out


def command_delta(before: Counter, after: Counter, own: Counter | None = None) -> Counter:
    """Calls made between two snapshots, minus the benchmark's own polling (``own``)."""
    delta: Counter[str] = Counter()
    for name in set(before) | set(after):
        n = after.get(name, 0) - before.get(name, 0) - (own or {}).get(name, 0)
        if n > 0:
            delta[name] = n
    return delta


def rounded(v, nd=1):
    return None if v is None else round(v, nd)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


# ----------------------------------------------------------------------------------- one run
def _outcomes(rows, sent):
    """Latencies (ms, recorded - sent) and record times of the payments that ended OK; errors by kind."""
    lat: list[float] = []
    ends: list[float] = []
    errors: Counter[str] = Counter()
    for (status, end), t_sent in zip(rows, sent, strict=True):
        if status in OK_STATUSES and end is not None:
            lat.append((end - t_sent) * 1000.0)
            ends.append(end)
        else:
            errors[status or "MISSING"] += 1
    return lat, ends, errors


def _per_payment(before: dict, after: dict, key: str, n: int) -> float:
    return round((after[key] - before[key]) * 1000.0 / n, 3)


def run_metrics(*, n, ids, sent, rows, snapshots, own, t_start, finished, paced_rate, max_lag) -> dict:
    """One measured run: ``rows`` are the side's (status, recorded) per id, ``sent`` the enqueue (or
    scheduled) times, ``snapshots`` (s0, s1, s2) the OS/Redis counters before the enqueue, after it and
    at the end (``bench.runner.Runner.snapshot``), ``own`` the benchmark's own Redis commands."""
    s0, s1, s2 = snapshots
    lat, ends, errors = _outcomes(rows, sent)
    missing = [pid for pid, (status, end) in zip(ids, rows, strict=True)
               if not (status in OK_STATUSES and end is not None)]
    elapsed = (max(ends) - t_start) if ends else None
    cmds = command_delta(s0["cmds"], s2["cmds"], own)
    enqueue_cmds = command_delta(s0["cmds"], s1["cmds"], Counter({"info": 2}))
    burst = paced_rate is None
    wall = s2["t"] - s0["t"]
    ours_cpu = sum(s2[k] - s0[k] for k in ("worker_cpu", "producer_cpu", "sandbox_cpu", "redis_cpu"))
    return {
        "n": n,
        "ok": len(ends),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "error_ids": missing[:10],
        "incomplete": not finished,
        "per_s": round(len(ends) / elapsed, 1) if elapsed and elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "p50_ms": rounded(percentile(lat, 50)),
        "p95_ms": rounded(percentile(lat, 95)),
        "p99_ms": rounded(percentile(lat, 99)),
        "max_ms": rounded(max(lat) if lat else None),
        "cpu_ms": _per_payment(s0, s2, "worker_cpu", n),
        "redis_cmds": round(sum(cmds.values()) / n, 2),
        "redis_cmds_enqueue": round(sum(enqueue_cmds.values()) / n, 2),
        "redis_cmds_top": {k: round(v / n, 2) for k, v in cmds.most_common(10)},
        "redis_cpu_ms": _per_payment(s0, s2, "redis_cpu", n),
        # client round trips (Redis read events) per payment, the benchmark's own polling and INFO taken out
        "redis_round_trips": round((s2["reads"] - s0["reads"] - own.get(ROUND_TRIPS, 0)) / n, 2)
        if "reads" in s0 else None,
        "redis_round_trips_enqueue": round((s1["reads"] - s0["reads"] - 3) / n, 2)
        if burst and "reads" in s0 else None,
        # cores other processes kept busy meanwhile (whole machine's busy time minus this benchmark's processes)
        "host_other_cores": round(max(0.0, s2["host_busy"] - s0["host_busy"] - ours_cpu) / wall, 2)
        if wall > 0 and "host_busy" in s0 else None,
        "sandbox_cpu_ms": _per_payment(s0, s2, "sandbox_cpu", n),
        "producer_cpu_ms": _per_payment(s0, s1 if burst else s2, "producer_cpu", n),
        "enqueue_per_s": round(n / (s1["t"] - s0["t"]), 1) if burst and s1["t"] > s0["t"] else None,
        "paced_rate": round(paced_rate, 1) if paced_rate else None,
        "producer_max_lag_ms": round(max_lag * 1000.0, 1) if paced_rate else None,
    }


# ----------------------------------------------------------------------------------- one configuration
def _side_summary(rs: list[dict], ps: list[dict], producer_subscribe: bool) -> dict:
    """Medians of one side's burst runs ``rs`` and paced runs ``ps``."""
    def med(runs, key):
        return median([m[key] for m in runs])

    return {
        "per_s": med(rs, "per_s"),
        "cpu_ms": med(rs, "cpu_ms"),
        "burst_p50_ms": med(rs, "p50_ms"),
        "burst_p95_ms": med(rs, "p95_ms"),
        "burst_p99_ms": med(rs, "p99_ms"),
        "paced_p50_ms": med(ps, "p50_ms"),
        "paced_p95_ms": med(ps, "p95_ms"),
        "paced_p99_ms": med(ps, "p99_ms"),
        "paced_per_s": med(ps, "per_s"),
        "paced_cpu_ms": med(ps, "cpu_ms"),
        "redis_cmds": med(rs, "redis_cmds"),
        "redis_cmds_enqueue": med(rs, "redis_cmds_enqueue"),
        "redis_cmds_top": rs[0]["redis_cmds_top"] if rs else {},
        "redis_cpu_ms": med(rs, "redis_cpu_ms"),
        "redis_round_trips": med(rs, "redis_round_trips"),
        "redis_round_trips_enqueue": med(rs, "redis_round_trips_enqueue"),
        "spread": {key: spread([m.get(key) for m in rs]) for key in SPREAD_KEYS},
        "redis_ceiling_per_s": ceiling(med(rs, "redis_cpu_ms")),
        "host_other_cores": med(rs + ps, "host_other_cores"),
        "sandbox_cpu_ms": med(rs, "sandbox_cpu_ms"),
        "producer_cpu_ms": med(rs, "producer_cpu_ms"),
        "enqueue_per_s": med(rs, "enqueue_per_s"),
        "producer_max_lag_ms": max([m["producer_max_lag_ms"] or 0 for m in ps], default=None),
        "producer_subscriptions_max": max([m["producer_subscriptions"] for m in rs + ps], default=None),
        "pubsub_output_buffer_max": max([m["pubsub_output_buffer_bytes"] or 0 for m in rs + ps], default=None)
        if producer_subscribe else None,
        "errors": sum(m["errors"] for m in rs + ps),
        "redelivered": sum(m["redelivered"] for m in rs + ps),
        "error_kinds": dict(sum((Counter(m["error_kinds"]) for m in rs + ps), Counter())),
        "runs": {"burst": rs, "paced": ps},
    }


def ceiling(redis_cpu_ms):
    """Payments/s one Redis core allows at this Redis CPU per payment (Redis runs commands on one thread)."""
    return round(1000.0 / redis_cpu_ms) if redis_cpu_ms else None


def cpu_capacity(workers, cpu_ms):
    """Payments/s the worker processes reach when CPU-bound: each uses at most one core."""
    return round(workers * 1000.0 / cpu_ms, 1) if cpu_ms else None


def config_summary(key, *, workers, bound, runs, paced, rate, producer_subscribe) -> dict:
    """One pool x concurrency x latency: both sides' medians and the ratios between them."""
    pool, conc, latency = key
    cfg = {"pool": pool, "concurrency": conc, "workers": workers, "latency_ms": latency,
           "bound_per_s": round(bound, 1) if bound else None, "paced_rate": round(rate, 1) if rate else None}
    for name in ("ours", "baseline"):
        cfg[name] = _side_summary(runs[name], paced[name], producer_subscribe)
    o, b = cfg["ours"], cfg["baseline"]
    for side in (o, b):
        side["cpu_capacity_per_s"] = cpu_capacity(workers, side["cpu_ms"])
        # what this side could reach here: the latency bound or its CPU capacity, whichever is lower
        limits = [v for v in (bound, side["cpu_capacity_per_s"]) if v]
        side["capacity_per_s"] = min(limits) if limits else None
    cfg["ratios"] = {
        "throughput": ratio(o["per_s"], b["per_s"]),
        "cpu": ratio(o["cpu_ms"], b["cpu_ms"]),
        "bound": ratio(o["per_s"], bound),
        "baseline_bound": ratio(b["per_s"], bound),
        "capacity": ratio(o["per_s"], o["capacity_per_s"]),
        "baseline_capacity": ratio(b["per_s"], b["capacity_per_s"]),
        "redis_cmds": ratio(o["redis_cmds"], b["redis_cmds"]),
        "redis_cpu": ratio(o["redis_cpu_ms"], b["redis_cpu_ms"]),
        "redis_round_trips": ratio(o["redis_round_trips"], b["redis_round_trips"]),
    }
    # Each repetition ran both sides back to back: the ratio of each pair, and their spread (min, max).
    pairs = list(zip(runs["ours"], runs["baseline"], strict=False))
    cfg["ratio_runs"] = {name: [ratio(om.get(key), bm.get(key)) for om, bm in pairs]
                         for name, key in (("throughput", "per_s"), ("cpu", "cpu_ms"), ("redis_cpu", "redis_cpu_ms"))}
    cfg["ratio_spread"] = {name: spread(values) for name, values in cfg["ratio_runs"].items()}
    return cfg


def p99_of(side: dict) -> float | None:
    """The paced p99 when there was a paced phase, else the burst p99."""
    return side["paced_p99_ms"] if side["paced_p99_ms"] is not None else side["burst_p99_ms"]


# ----------------------------------------------------------------------------------- the whole run
def _target(out: list, name: str, where: str, value, *, at_most=None, at_least=None) -> None:
    passed = value is not None and (at_most is None or value <= at_most) and (at_least is None or value >= at_least)
    out.append({"target": name, "where": where, "value": value, "pass": passed})


def evaluate_targets(configs) -> list[dict]:
    """Issue 28's targets, ratios of one run (medians): at 0 ms (gevent) worker CPU <= 0.95x and Redis CPU <= 1.5x the
    baseline's, throughput >= 1.0x with one worker and >= 0.95x with two, paced p99 <= the baseline's + 5 ms; at
    200 ms (c=50) ours >= 0.95 x min(latency bound, CPU capacity)."""
    out: list[dict] = []
    for c in configs:
        o, b, r = c["ours"], c["baseline"], c["ratios"]
        where = f"{c['pool']} c={c['concurrency']} w={c['workers']} latency={c['latency_ms']:g}ms"
        if c["latency_ms"] == 0 and c["pool"] == "gevent":
            least = 1.0 if c["workers"] == 1 else 0.95
            _target(out, f"throughput ours/baseline >= {least:g}", where, r["throughput"], at_least=least)
            _target(out, "worker CPU ms ours/baseline <= 0.95", where, r["cpu"], at_most=0.95)
            _target(out, "Redis CPU ms ours/baseline <= 1.5", where, r["redis_cpu"], at_most=1.5)
            if o["paced_p99_ms"] is not None and b["paced_p99_ms"] is not None:
                limit = b["paced_p99_ms"] + 5
                _target(out, f"paced p99 <= baseline's + 5 ms ({limit:g} ms)", where, o["paced_p99_ms"],
                        at_most=limit)
        if c["latency_ms"] == 200 and c["concurrency"] == 50:
            _target(out, "ours/min(latency bound, CPU capacity) >= 0.95", where, r.get("capacity"),
                    at_least=0.95)
    return out


def headline(configs) -> dict:
    """The figures of the primary (first) configuration that the final JSON line leads with."""
    if not configs:
        return {}
    primary = configs[0]
    o, b = primary["ours"], primary["baseline"]
    # The bound only means something with latency: when the primary configuration has none,
    # the bound figures come from the first configuration of the same pool and concurrency
    # that has (bound_latency_ms says which).
    at_bound = primary if primary["bound_per_s"] else next(
        (c for c in configs if c["bound_per_s"] and c["pool"] == primary["pool"]
         and c["concurrency"] == primary["concurrency"]), None)
    return {
        "bound_latency_ms": at_bound["latency_ms"] if at_bound else None,
        "ours_per_s_at_bound": at_bound["ours"]["per_s"] if at_bound else None,
        "baseline_per_s_at_bound": at_bound["baseline"]["per_s"] if at_bound else None,
        "primary": {k: primary[k] for k in ("pool", "concurrency", "workers", "latency_ms")},
        "ours_per_s": o["per_s"], "baseline_per_s": b["per_s"],
        "bound_per_s": at_bound["bound_per_s"] if at_bound else None,
        "ours_cpu_ms": o["cpu_ms"], "baseline_cpu_ms": b["cpu_ms"],
        "p99_ms": o["paced_p99_ms"] if o["paced_p99_ms"] is not None else o["burst_p99_ms"],
        "p99_kind": "paced" if o["paced_p99_ms"] is not None else "burst",
        "throughput_ratio": primary["ratios"]["throughput"], "cpu_ratio": primary["ratios"]["cpu"],
        "ours_redis_cmds": o["redis_cmds"], "baseline_redis_cmds": b["redis_cmds"],
        "ours_redis_cpu_ms": o["redis_cpu_ms"], "baseline_redis_cpu_ms": b["redis_cpu_ms"],
        "ours_redis_round_trips": o["redis_round_trips"], "baseline_redis_round_trips": b["redis_round_trips"],
        "ours_redis_ceiling_per_s": o["redis_ceiling_per_s"], "baseline_redis_ceiling_per_s": b["redis_ceiling_per_s"],
        "bound_ratio": at_bound["ratios"]["bound"] if at_bound else None,
        "errors": sum(c["ours"]["errors"] + c["baseline"]["errors"] for c in configs),
    }


# ----------------------------------------------------------------------------------- profiles
# A py-spy "raw" (folded) line: "frame;frame;...;frame COUNT", frame = "function (path:line)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Stages of one payment, recognised by a frame anywhere in the sample's stack (inclusive share).
# py-spy runs with --full-filenames, so our files are told apart from celery/worker/*.


def _ours(path: str, *suffixes: str) -> bool:
    return "site-packages" not in path and path.endswith(suffixes)


def _ours_under(path: str, folder: str) -> bool:
    return "site-packages" not in path and f"/{folder}" in path


def _lib(path: str, package: str) -> bool:
    return f"site-packages/{package}/" in path


STAGES = (
    ("task body (worker/tasks/payments.py: sale)", lambda f, p: _ours(p, "worker/tasks/payments.py") and f == "sale"),
    ("  argument binding (worker/tasks/payments.py:_bind, inspect)",
     lambda f, p: _ours(p, "worker/tasks/payments.py") and f == "_bind"),
    ("  card vault open (worker/cards/vault.py)", lambda f, p: _ours(p, "worker/cards/vault.py")),
    ("  results store (worker/store/)", lambda f, p: _ours_under(p, "worker/store/")),
    ("  gateway client (worker/gateway/*)", lambda f, p: "site-packages" not in p and "/worker/gateway/" in p),
    ("    HTTP (requests/urllib3/http.client)",
     lambda f, p: _lib(p, "requests") or _lib(p, "urllib3") or p.endswith("http/client.py")),
    ("    retry wrapper (tenacity)", lambda f, p: _lib(p, "tenacity")),
    ("    proxy/env lookup (requests.utils, urllib.request)",
     lambda f, p: p.endswith("urllib/request.py") or (_lib(p, "requests") and f in (
         "get_environ_proxies", "should_bypass_proxies", "merge_environment_settings"))),
    ("    validation (worker/gateway/validation.py)", lambda f, p: _ours(p, "worker/gateway/validation.py")),
    ("    seal / protocol (worker/gateway/seal.py, protocol.py)",
     lambda f, p: _ours(p, "worker/gateway/seal.py", "worker/gateway/protocol.py")),
    ("  logging", lambda f, p: "/logging/" in p),
    ("celery result backend store (celery/backends/*)", lambda f, p: _lib(p, "celery/backends")),
    ("celery task events (celery/events/*)", lambda f, p: _lib(p, "celery/events")),
    ("celery trace (celery/app/trace.py)", lambda f, p: p.endswith("celery/app/trace.py")),
    ("broker receive + ack (kombu drain_events, Request.acknowledge)",
     lambda f, p: (_lib(p, "kombu") and f in ("drain_events", "Transport.drain_events", "Connection.drain_events"))
     or f in ("Request.acknowledge", "Consumer.call_soon_ack")),
    ("kombu (all callers)", lambda f, p: _lib(p, "kombu")),
    ("redis-py client (all callers)", lambda f, p: _lib(p, "redis")),
    ("socket send/recv syscalls (all callers)",
     lambda f, p: f in ("SocketMixin.send", "SocketMixin.recv", "SocketMixin.recv_into", "socket.send",
                        "socket.sendall", "socket.recv_into")),
    ("json (all callers)", lambda f, p: "/json/" in p),
)

# An exclusive split of the samples (they add up to 100%): each sample goes to the first rule that
# matches a frame of its stack.
PARTITION = (
    ("results store (worker/store/)", lambda f, p: _ours_under(p, "worker/store/")),
    ("card vault (worker/cards/vault.py)", lambda f, p: _ours(p, "worker/cards/vault.py")),
    ("gateway HTTP POST (worker/gateway/transport.py:HttpTransport.post)",
     lambda f, p: _ours(p, "worker/gateway/transport.py") and f.endswith("post")),
    ("gateway client rest (retry, seal, request, reply parse, validation)",
     lambda f, p: "site-packages" not in p and "/worker/gateway/" in p),
    ("baseline task HTTP POST (requests)", lambda f, p: p.endswith("bench/baseline.py")),
    ("task body rest (tasks/, worker/payments/flow.py, argument binding)",
     lambda f, p: _ours(p, "worker/tasks/payments.py", "worker/payments/flow.py", "worker/services.py")),
    ("celery task events", lambda f, p: _lib(p, "celery/events")),
    ("celery result backend", lambda f, p: _lib(p, "celery/backends")),
    ("broker receive + ack (kombu)", lambda f, p: _lib(p, "kombu")),
    ("celery worker other (trace, request, strategy, loop)", lambda f, p: _lib(p, "celery")),
    ("other (gevent hub, idle loop)", lambda f, p: True),
)

# Leaf frames of threads that are parked, which py-spy does not always recognise as idle (gevent's
# native threadpool workers waiting for a job): dropped from the totals.
IDLE_LEAVES = ("acquire_with_timeout", "_Condition.wait", "Queue.get")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("lib/python"):
                path = path.split("/", 1)[-1]
            return path
    for marker in ("/worker/", "/tasks/", "/bench/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def _parse(line: str):
    line = line.rstrip("\n")
    if not line or " " not in line:
        return None, 0
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None, 0
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        if m:
            frames.append((m.group("func"), m.group("path")))
        else:
            frames.append((raw.strip(), ""))  # process / thread name pseudo-frames
    return frames, n


@dataclass
class Tally:
    """Sample counts of folded stacks: total, idle, inclusive and self per frame, self per package, per
    stage and per part of the exclusive split."""

    total: int = 0
    idle: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    leaf_pkg: Counter[str] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)
    parts: Counter[str] = field(default_factory=Counter)

    def add(self, frames, n: int) -> None:
        self.total += n
        seen = set()
        for func, path in frames:
            key = f"{_short(path)}:{func}" if path else func
            if key not in seen:
                seen.add(key)
                self.inclusive[key] += n
        func, path = frames[-1]
        self.own[f"{_short(path)}:{func}" if path else func] += n
        short = _short(path)
        self.leaf_pkg[short.split("/", 1)[0] if "/" in short else short] += n
        for name, test in STAGES:
            if any(test(f, p) for f, p in frames):
                self.stages[name] += n
        for name, test in PARTITION:
            if any(test(f, p) for f, p in frames):
                self.parts[name] += n
                break


def _tally(lines) -> Tally:
    t = Tally()
    for line in lines:
        frames, n = _parse(line)
        if not frames or not n:
            continue
        if frames[-1][0] in IDLE_LEAVES and "gevent" in frames[-1][1]:
            t.idle += n
            continue
        t.add(frames, n)
    return t


def summarize_profile(lines, top: int = 25) -> dict:
    """Inclusive and self shares (of all sampled, non-idle stacks) by file:function and by stage."""
    t = _tally(lines)
    total = t.total
    if not total:
        return {"samples": 0, "idle_samples_dropped": t.idle}

    def pct(counter, k=top, skip_ubiquitous=False):
        out = []
        for key, n in counter.most_common():
            share = 100.0 * n / total
            if skip_ubiquitous and share > 97.0:
                continue
            out.append({"frame": key, "pct": round(share, 1)})
            if len(out) >= k:
                break
        return out

    ours = Counter({k: v for k, v in t.inclusive.items() if k.startswith(("worker/", "tasks/"))})
    return {
        "samples": total,
        "idle_samples_dropped": t.idle,
        "partition_pct": [{"part": name, "pct": round(100.0 * t.parts[name] / total, 1)}
                          for name, _ in PARTITION if t.parts[name]],
        "stages_inclusive_pct": [{"stage": name, "pct": round(100.0 * t.stages[name] / total, 1)}
                                 for name, _ in STAGES],
        "top_inclusive": pct(t.inclusive, skip_ubiquitous=True),
        "top_inclusive_ours": pct(ours),
        "top_self": pct(t.own),
        "self_by_package": pct(t.leaf_pkg, 15),
    }


def merge_folded(paths) -> list[str]:
    lines: list[str] = []
    for path in paths:
        try:
            with open(path) as f:
                lines.extend(f.readlines())
        except OSError:
            pass
    return lines


def group_by(items, key):
    out = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out

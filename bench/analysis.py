"""Pure helpers of the benchmark: percentiles, medians, Redis command deltas, profile summaries."""
from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict

__all__ = ["percentile", "median", "commandstats", "command_delta", "summarize_profile", "STAGES"]


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


def commandstats(info: dict) -> Counter:
    """``INFO commandstats`` (as redis-py parses it) -> Counter of calls by command name."""
    out = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key[len("cmdstat_"):]] = int(value.get("calls", 0))
    return out


def command_delta(before: Counter, after: Counter, own: Counter | None = None) -> Counter:
    """Calls made between two snapshots, minus the benchmark's own polling (``own``)."""
    delta = Counter()
    for name in set(before) | set(after):
        n = after.get(name, 0) - before.get(name, 0) - (own or {}).get(name, 0)
        if n > 0:
            delta[name] = n
    return delta


# ----------------------------------------------------------------------------------- profiles
# A py-spy "raw" (folded) line: "frame;frame;...;frame COUNT", frame = "function (path:line)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Stages of one payment, recognised by a frame anywhere in the sample's stack (inclusive share).
# py-spy runs with --full-filenames, so our files are told apart from celery/worker/*.


def _ours(path: str, *suffixes: str) -> bool:
    return "site-packages" not in path and path.endswith(suffixes)


def _lib(path: str, package: str) -> bool:
    return f"site-packages/{package}/" in path


STAGES = (
    ("task body (tasks/payments.py: sale)", lambda f, p: _ours(p, "tasks/payments.py") and f == "sale"),
    ("  argument binding (tasks/payments.py:_bind, inspect)", lambda f, p: _ours(p, "tasks/payments.py") and f == "_bind"),
    ("  card vault open (worker/vault.py)", lambda f, p: _ours(p, "worker/vault.py")),
    ("  results store (worker/store.py)", lambda f, p: _ours(p, "worker/store.py")),
    ("  gateway client (worker/gateway/*)", lambda f, p: "site-packages" not in p and "/worker/gateway/" in p),
    ("    HTTP (requests/urllib3/http.client)", lambda f, p: _lib(p, "requests") or _lib(p, "urllib3") or p.endswith("http/client.py")),
    ("    retry wrapper (tenacity)", lambda f, p: _lib(p, "tenacity")),
    ("    proxy/env lookup (requests.utils, urllib.request)", lambda f, p: p.endswith("urllib/request.py") or (_lib(p, "requests") and f in ("get_environ_proxies", "should_bypass_proxies", "merge_environment_settings"))),
    ("    validation (worker/gateway/validation.py)", lambda f, p: _ours(p, "worker/gateway/validation.py")),
    ("    seal / protocol (worker/gateway/seal.py, protocol.py)", lambda f, p: _ours(p, "worker/gateway/seal.py", "worker/gateway/protocol.py")),
    ("  logging", lambda f, p: "/logging/" in p),
    ("celery result backend store (celery/backends/*)", lambda f, p: _lib(p, "celery/backends")),
    ("celery task events (celery/events/*)", lambda f, p: _lib(p, "celery/events")),
    ("celery trace (celery/app/trace.py)", lambda f, p: p.endswith("celery/app/trace.py")),
    ("broker receive + ack (kombu drain_events, Request.acknowledge)", lambda f, p: (_lib(p, "kombu") and f in ("drain_events", "Transport.drain_events", "Connection.drain_events")) or f in ("Request.acknowledge", "Consumer.call_soon_ack")),
    ("kombu (all callers)", lambda f, p: _lib(p, "kombu")),
    ("redis-py client (all callers)", lambda f, p: _lib(p, "redis")),
    ("socket send/recv syscalls (all callers)", lambda f, p: f in ("SocketMixin.send", "SocketMixin.recv", "SocketMixin.recv_into", "socket.send", "socket.sendall", "socket.recv_into")),
    ("json (all callers)", lambda f, p: "/json/" in p),
)

# An exclusive split of the samples (they add up to 100%): each sample goes to the first rule that
# matches a frame of its stack.
PARTITION = (
    ("results store (worker/store.py)", lambda f, p: _ours(p, "worker/store.py")),
    ("card vault (worker/vault.py)", lambda f, p: _ours(p, "worker/vault.py")),
    ("gateway HTTP POST (worker/gateway/transport.py:HttpTransport.post)",
     lambda f, p: _ours(p, "worker/gateway/transport.py") and f.endswith("post")),
    ("gateway client rest (retry, seal, request, reply parse, validation)",
     lambda f, p: "site-packages" not in p and "/worker/gateway/" in p),
    ("baseline task HTTP POST (requests)", lambda f, p: p.endswith("bench/baseline.py")),
    ("task body rest (tasks/, worker/flow.py, argument binding)",
     lambda f, p: _ours(p, "tasks/payments.py", "worker/flow.py", "worker/services.py")),
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


def summarize_profile(lines, top: int = 25) -> dict:
    """Inclusive and self shares (of all sampled, non-idle stacks) by file:function and by stage."""
    total = 0
    idle = 0
    inclusive = Counter()
    own = Counter()
    leaf_pkg = Counter()
    stages = Counter()
    parts = Counter()
    for line in lines:
        frames, n = _parse(line)
        if not frames or not n:
            continue
        if frames[-1][0] in IDLE_LEAVES and "gevent" in frames[-1][1]:
            idle += n
            continue
        total += n
        seen = set()
        for func, path in frames:
            key = f"{_short(path)}:{func}" if path else func
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
        func, path = frames[-1]
        own[f"{_short(path)}:{func}" if path else func] += n
        short = _short(path)
        leaf_pkg[short.split("/", 1)[0] if "/" in short else short] += n
        for name, test in STAGES:
            if any(test(f, p) for f, p in frames):
                stages[name] += n
        for name, test in PARTITION:
            if any(test(f, p) for f, p in frames):
                parts[name] += n
                break
    if not total:
        return {"samples": 0, "idle_samples_dropped": idle}

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

    ours = Counter({k: v for k, v in inclusive.items() if k.startswith(("worker/", "tasks/"))})
    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "partition_pct": [{"part": name, "pct": round(100.0 * parts[name] / total, 1)}
                          for name, _ in PARTITION if parts[name]],
        "stages_inclusive_pct": [{"stage": name, "pct": round(100.0 * stages[name] / total, 1)}
                                 for name, _ in STAGES],
        "top_inclusive": pct(inclusive, skip_ubiquitous=True),
        "top_inclusive_ours": pct(ours),
        "top_self": pct(own),
        "self_by_package": pct(leaf_pkg, 15),
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

"""What a benchmark run writes and prints: the table, the Markdown table, the PNG chart, the profile
summary, the files in ``--out`` and, as the LAST line of stdout, one line of JSON (docs/design.md: the
"benchmark" contract: ``ours_per_s``, ``baseline_per_s``, ``bound_per_s``, ``ours_cpu_ms``,
``baseline_cpu_ms``, ``p99_ms`` at least)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from bench.analysis import p99_of

#: Keys of the final JSON line taken from the result as they are (then targets and per-config figures).
LAST_LINE_KEYS = ("ours_per_s", "baseline_per_s", "bound_per_s", "ours_cpu_ms", "baseline_cpu_ms", "p99_ms",
                  "p99_kind", "throughput_ratio", "cpu_ratio", "bound_latency_ms", "ours_per_s_at_bound",
                  "baseline_per_s_at_bound", "bound_ratio", "ours_redis_cmds", "baseline_redis_cmds",
                  "ours_redis_cpu_ms", "baseline_redis_cpu_ms", "ours_redis_round_trips",
                  "baseline_redis_round_trips", "ours_redis_ceiling_per_s",
                  "baseline_redis_ceiling_per_s", "errors", "primary", "json_path")

TABLE_COLUMNS = [("pool", 7), ("c", 4), ("w", 2), ("lat", 5), ("ours/s", 7), ("base/s", 7), ("bound/s", 8),
                 ("o/b", 5), ("o/bnd", 6), ("cpu o", 6), ("cpu b", 6), ("cpu o/b", 7), ("p50", 6), ("p95", 6),
                 ("p99", 6), ("p99 b", 6), ("@/s", 5), ("rss o", 6), ("rss b", 6), ("cmd o", 6), ("cmd b", 6),
                 ("rcpu o", 6), ("rcpu b", 6), ("rt o", 5), ("rt b", 5), ("ceil o", 7), ("ceil b", 7),
                 ("o/cap", 6), ("b/cap", 6), ("other", 5), ("err", 4)]


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pick(side: dict, q: str):
    """A latency percentile of the paced phase, or of the bursts with --no-paced."""
    v = side[f"paced_{q}_ms"]
    return v if v is not None else side[f"burst_{q}_ms"]


def _row(c: dict) -> list:
    """The figures of one configuration, in the order of the text and Markdown tables."""
    o, b, r = c["ours"], c["baseline"], c["ratios"]
    return [c["pool"], c["concurrency"], c["workers"], fmt(c["latency_ms"], 0), fmt(o["per_s"]),
            fmt(b["per_s"]), fmt(c["bound_per_s"]), fmt(r["throughput"], 2), fmt(r["bound"], 2),
            fmt(o["cpu_ms"], 2), fmt(b["cpu_ms"], 2), fmt(r["cpu"], 2), fmt(_pick(o, "p50")),
            fmt(_pick(o, "p95")), fmt(_pick(o, "p99")), fmt(_pick(b, "p99")), fmt(c["paced_rate"], 0),
            fmt(o.get("rss_peak_mb"), 0), fmt(b.get("rss_peak_mb"), 0), fmt(o["redis_cmds"]),
            fmt(b["redis_cmds"]), fmt(o.get("redis_cpu_ms"), 3), fmt(b.get("redis_cpu_ms"), 3),
            fmt(o.get("redis_round_trips")), fmt(b.get("redis_round_trips")),
            fmt(o.get("redis_ceiling_per_s"), 0), fmt(b.get("redis_ceiling_per_s"), 0), fmt(r.get("capacity"), 2),
            fmt(r.get("baseline_capacity"), 2), fmt(o.get("host_other_cores"), 2), o["errors"] + b["errors"]]


def table(result) -> str:
    head = " ".join(f"{n:>{w}}" for n, w in TABLE_COLUMNS)
    lines = [head, "-" * len(head)]
    for c in result["configs"]:
        lines.append(" ".join(f"{v!s:>{w}}" for v, (_, w) in zip(_row(c), TABLE_COLUMNS, strict=True)))
    lines += [
        "",
        "ours/s, base/s: capacity (pre-filled queue), median payments/s; bound/s = c x w / latency;",
        "o/b, o/bnd: ours/baseline and ours/bound; cpu o/b: worker CPU ms per payment (OS user+sys);",
        "p50/p95/p99 (ours) and p99 b (baseline): enqueue->recorded ms in the paced phase at @/s",
        "(half our capacity; burst percentiles when --no-paced); rss: peak MB per worker (VmHWM, all",
        "processes of a worker); cmd: Redis commands per payment (commandstats, Lua inner calls included"
        + ("" if result["settings"]["redis_exclusive"] else "; SHARED server: others' traffic included") + ");",
        "rcpu: Redis CPU ms per payment (INFO cpu); rt: Redis round trips per payment (read events Redis handled,",
        "INFO stats total_reads_processed; the bench's own polling taken out); ceil: payments/s one Redis core",
        "allows at that (1000/rcpu);",
        "o/cap, b/cap: payments/s / min(latency bound, CPU capacity = w x 1000 / cpu ms); other: cores other",
        "processes on this host kept busy during the runs (median).",
        "",
        spread_table(result),
    ]
    return "\n".join(lines)


def _span(median_value, bounds, nd=2) -> str:
    """``median (min-max)``."""
    if median_value is None:
        return "-"
    if not bounds:
        return fmt(median_value, nd)
    return f"{fmt(median_value, nd)} ({fmt(bounds[0], nd)}-{fmt(bounds[1], nd)})"


def _spread_row(c: dict) -> list[str]:
    o, b, r = c["ours"], c["baseline"], c["ratios"]
    rs = c.get("ratio_spread") or {}
    so, sb = o.get("spread") or {}, b.get("spread") or {}
    return [f"{c['pool']} c={c['concurrency']} w={c['workers']} {c['latency_ms']:g}ms",
            str(len(o["runs"]["burst"])),
            _span(r["throughput"], rs.get("throughput")), _span(r["cpu"], rs.get("cpu")),
            _span(r["redis_cpu"], rs.get("redis_cpu")),
            _span(o["per_s"], so.get("per_s"), 1), _span(b["per_s"], sb.get("per_s"), 1),
            _span(o["cpu_ms"], so.get("cpu_ms")), _span(b["cpu_ms"], sb.get("cpu_ms")),
            _span(o.get("redis_cpu_ms"), so.get("redis_cpu_ms"), 3),
            _span(b.get("redis_cpu_ms"), sb.get("redis_cpu_ms"), 3),
            _span(o.get("redis_round_trips"), so.get("redis_round_trips"), 1),
            _span(b.get("redis_round_trips"), sb.get("redis_round_trips"), 1),
            f"{fmt(o.get('redis_round_trips_enqueue'))} / {fmt(b.get('redis_round_trips_enqueue'))}"]


SPREAD_HEAD = ["configuration", "runs", "throughput o/b", "worker CPU o/b", "Redis CPU o/b", "ours/s", "base/s",
               "CPU ms ours", "CPU ms base", "Redis CPU ms ours", "Redis CPU ms base", "round trips ours",
               "round trips base", "producer round trips ours / base"]


def spread_table(result) -> str:
    """Median (min-max) over the burst runs of each configuration; the ratios' spread is over the pairs of runs
    (each repetition ran both sides back to back)."""
    rows = [SPREAD_HEAD, *(_spread_row(c) for c in result["configs"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SPREAD_HEAD))]
    lines = ["spread over the burst runs: median (min-max); ratios of each pair of runs (ours, baseline back to back)"]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def spread_markdown(result) -> str:
    """The spread table as Markdown (docs/performance.md)."""
    lines = ["| " + " | ".join(SPREAD_HEAD) + " |", "|" + "---|" * len(SPREAD_HEAD)]
    lines += ["| " + " | ".join(_spread_row(c)) + " |" for c in result["configs"]]
    return "\n".join(lines)


def markdown(result) -> str:
    """The table as Markdown (written next to the JSON, for docs/performance.md)."""
    head = ("| pool | c | w | latency ms | ours/s | baseline/s | bound/s | ours/base | ours/bound | "
            "CPU ms ours | CPU ms base | CPU ours/base | p50 ms | p95 ms | p99 ms | p99 ms base | paced at /s | "
            "RSS MB ours | RSS MB base | Redis cmds ours | Redis cmds base | Redis CPU ms ours | Redis CPU ms base | "
            "Redis round trips ours | Redis round trips base | "
            "Redis ceiling/s ours | Redis ceiling/s base | ours/capacity | base/capacity | other cores | errors | "
            "redelivered |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in result["configs"]:
        vals = [*_row(c), c["ours"].get("redelivered", 0)]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines) + "\n\n" + spread_markdown(result)


# ------------------------------------------------------------------------------------ the chart
COLORS = {"gevent": "tab:blue", "threads": "tab:green", "prefork": "tab:red"}


def _plot_latency_row(ax_t, ax_l, configs, pools, lat) -> None:
    """Throughput (left) and p99 (right) against concurrency, for one gateway latency."""
    counts = sorted({c["workers"] for c in configs})
    for pool, workers in itertools.product(pools, counts):
        cs = sorted((c for c in configs if c["latency_ms"] == lat and c["pool"] == pool and c["workers"] == workers),
                    key=lambda c: c["concurrency"])
        if not cs:
            continue
        xs = [c["concurrency"] for c in cs]
        col = COLORS.get(pool)
        name = pool if len(counts) == 1 else f"{pool} w={workers}"
        alpha = 1.0 if workers == counts[0] else 0.55
        ax_t.plot(xs, [c["ours"]["per_s"] for c in cs], "o-", color=col, alpha=alpha, label=f"ours {name}")
        ax_t.plot(xs, [c["baseline"]["per_s"] for c in cs], "s--", color=col, alpha=0.6 * alpha,
                  label=f"baseline {name}")
        if lat > 0 and pool == pools[0]:
            ax_t.plot(xs, [c["bound_per_s"] for c in cs], ":", color="grey", label=f"latency bound ({name})")
        ax_l.plot(xs, [p99_of(c["ours"]) for c in cs], "o-", color=col, alpha=alpha, label=f"ours {name}")
        ax_l.plot(xs, [p99_of(c["baseline"]) for c in cs], "s--", color=col, alpha=0.6 * alpha,
                  label=f"baseline {name}")
    ax_l.axhline(lat + 50, color="grey", ls=":", label="target: latency + 50 ms")
    ax_t.set_title(f"throughput, gateway latency {lat:g} ms")
    ax_t.set_xlabel("concurrency per worker")
    ax_t.set_ylabel("payments/s")
    ax_t.set_ylim(bottom=0)
    ax_l.set_title(f"p99 enqueue->recorded (paced at half capacity), {lat:g} ms")
    ax_l.set_xlabel("concurrency per worker")
    ax_l.set_ylabel("ms")
    ax_l.set_ylim(bottom=0)
    for ax in (ax_t, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def chart(result, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = result["configs"]
    latencies = sorted({c["latency_ms"] for c in configs})
    pools = list(dict.fromkeys(c["pool"] for c in configs))
    fig, axes = plt.subplots(len(latencies), 2, figsize=(11, 3.6 * len(latencies)), squeeze=False)
    for row, lat in enumerate(latencies):
        _plot_latency_row(axes[row][0], axes[row][1], configs, pools, lat)
    m = result["machine"]
    fig.suptitle(f"payments bench {result['started_at']}  ({m['nproc']} x {m['cpu_model']}, "
                 f"workers={result['settings']['workers']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ profiles
def profile_text(profiles) -> str:
    lines = []
    for name, prof in (profiles or {}).items():
        s = prof.get("summary") or {}
        if not s.get("samples"):
            lines.append(f"profile {name}: no samples ({prof.get('error') or prof.get('py_spy_errors')})")
            continue
        lines.append(f"profile {name}: {s['samples']} samples (py-spy, non-idle), files {', '.join(prof['files'])}")
        lines.append("   exclusive split:")
        for part in s.get("partition_pct", []):
            lines.append(f"   {part['pct']:5.1f}%  {part['part']}")
        lines.append("   inclusive, by stage:")
        for st in s["stages_inclusive_pct"]:
            lines.append(f"   {st['pct']:5.1f}%  {st['stage']}")
        lines.append("   top self (leaf) frames:")
        for fr in s["top_self"][:12]:
            lines.append(f"   {fr['pct']:5.1f}%  {fr['frame']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ output
def write_files(result: dict, out: Path, stamp: str, *, with_chart: bool) -> tuple[Path, Path]:
    """``OUT/bench-STAMP.json``, ``.md`` and (unless ``with_chart`` is false or matplotlib is missing)
    ``.png``; sets ``json_path`` (and ``chart_path``) in ``result``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"bench-{stamp}.json"
    png_path = out / f"bench-{stamp}.png"
    result["json_path"] = str(json_path)
    if with_chart and chart(result, png_path):
        result["chart_path"] = str(png_path)
    json_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    (out / f"bench-{stamp}.md").write_text(markdown(result) + "\n")
    return json_path, png_path


def last_line(result: dict) -> dict:
    """The final line of stdout (the public contract), as a dict."""
    last = {k: result.get(k) for k in LAST_LINE_KEYS}
    last["targets_passed"] = sum(1 for t in result["targets"] if t["pass"])
    last["targets_total"] = len(result["targets"])
    last["configs"] = [{
        "pool": c["pool"], "concurrency": c["concurrency"], "workers": c["workers"],
        "latency_ms": c["latency_ms"], "ours_per_s": c["ours"]["per_s"], "baseline_per_s": c["baseline"]["per_s"],
        "bound_per_s": c["bound_per_s"], "ours_cpu_ms": c["ours"]["cpu_ms"], "baseline_cpu_ms": c["baseline"]["cpu_ms"],
        "p99_ms": p99_of(c["ours"]),
        "baseline_p99_ms": p99_of(c["baseline"]),
        "ours_redis_cmds": c["ours"]["redis_cmds"], "baseline_redis_cmds": c["baseline"]["redis_cmds"],
        "ours_redis_cpu_ms": c["ours"]["redis_cpu_ms"], "baseline_redis_cpu_ms": c["baseline"]["redis_cpu_ms"],
        "ours_redis_round_trips": c["ours"]["redis_round_trips"],
        "baseline_redis_round_trips": c["baseline"]["redis_round_trips"],
        "ratio_spread": c.get("ratio_spread"),
        "ours_redis_ceiling_per_s": c["ours"]["redis_ceiling_per_s"],
        "baseline_redis_ceiling_per_s": c["baseline"]["redis_ceiling_per_s"],
        "ours_capacity_per_s": c["ours"]["capacity_per_s"], "capacity_ratio": c["ratios"]["capacity"],
        "baseline_capacity_ratio": c["ratios"]["baseline_capacity"],
        "host_other_cores": c["ours"]["host_other_cores"],
        "errors": c["ours"]["errors"] + c["baseline"]["errors"],
    } for c in result["configs"]]
    return last


def print_report(result: dict, json_path: Path, png_path: Path) -> None:
    """The table, PASS/FAIL per target, the profile summary, the file names, then the JSON line."""
    print()
    if result.get("settings", {}).get("metrics_ab"):
        print("--metrics-ab: 'ours' = our worker with WORKER_METRICS_PORT; 'baseline' = our worker without metrics")
    print(table(result))
    print()
    for t in result["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']:45s} {t['where']:40s} {t['value']}")
    if result.get("profile"):
        print()
        print(profile_text(result["profile"]))
    print()
    print(f"json: {json_path}" + (f"\nchart: {png_path}" if result.get("chart_path") else ""))
    print(json.dumps(last_line(result), separators=(",", ":")), flush=True)

"""What kombu's fetch costs per message, with and without the pop script (worker/broker/atomic_fetch.py):
``python -m bench.fetch_micro [--messages N] [--rounds R]``.

A throw-away redis-server; per round and side, N messages published to a queue first (a backlog, as under load), then
consumed with acknowledgements by one kombu consumer (``drain_events``), each acked once ``--in-flight`` later ones
were delivered (default 100: gevent c=50 with the worker's prefetch of 2 per slot): ``kombu`` is kombu's
Redis transport with the worker's lean unacked bookkeeping (worker/broker/lean_transport.py), ``atomic`` adds the pop
script. Per message: Redis CPU (``INFO cpu`` user+sys), Redis round trips (``INFO stats`` reads) and this process's
CPU. The two sides alternate round by round, each in a child process of its own. Median (min-max), then JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDES = ("kombu", "atomic")


def child(side: str, messages: int, in_flight: int) -> dict[str, float]:
    import redis
    from kombu import Connection, Consumer, Producer, Queue

    from bench import procs
    from worker.broker import atomic_fetch, lean_transport

    lean_transport.install()
    if side == "atomic":
        atomic_fetch.install()
    proc, url, tmp = procs.start_private_redis()
    try:
        r = redis.Redis.from_url(url)
        body = {"kwargs": {"amount": "3.00", "order_id": "o" * 36}, "pad": "p" * 600}  # ~ a payment's message
        with Connection(url) as conn:
            queue = Queue("bench-fetch")
            producer = Producer(conn.channel())
            for i in range(messages + 1):
                producer.publish(body, routing_key=queue.name, declare=[queue], headers={"id": f"m-{i}"})
            got: list[Any] = []

            def on_message(_body: Any, message: Any) -> None:
                got.append(message)
                if len(got) > in_flight:
                    got[-1 - in_flight].ack()

            consumer = Consumer(conn.channel(), [queue], callbacks=[on_message], accept=["json"])
            consumer.consume()
            if side == "atomic":
                r.script_load(atomic_fetch.POP_SCRIPT)
            conn.drain_events(timeout=5)  # the first (kombu's BRPOP either way), unmeasured
            cpu = r.info("cpu")
            cpu0 = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
            reads0 = int(r.info("stats")["total_reads_processed"])
            own0 = time.process_time()
            while len(got) < messages + 1:
                conn.drain_events(timeout=5)
            for message in got[-in_flight:]:
                message.ack()
            own1 = time.process_time()
            reads1 = int(r.info("stats")["total_reads_processed"])
            cpu = r.info("cpu")
            cpu1 = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    finally:
        procs.stop(proc, timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"redis_cpu_us": (cpu1 - cpu0) * 1e6 / messages, "round_trips": (reads1 - reads0 - 2) / messages,
            "client_cpu_us": (own1 - own0) * 1e6 / messages}


def main(argv: list[str] | None = None) -> int:
    from bench.store_micro import print_spread

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=100, help="messages delivered and not yet acked")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.messages, a.in_flight)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for _ in range(a.rounds):
        for side in SIDES:
            command = [sys.executable, "-m", "bench.fetch_micro", "--child", side, "--messages", str(a.messages),
                       "--in-flight", str(a.in_flight)]
            out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_spread(runs, {side: f"{side}: {a.rounds} rounds of {a.messages} messages ({a.in_flight} in flight), "
                              "per message" for side in SIDES})
    return 0


if __name__ == "__main__":
    sys.exit(main())

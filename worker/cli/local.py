"""``payments demo``, ``sandbox``, ``bench`` and ``flower``: local processes."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_sandbox(args: Any) -> int:
    from worker.sandbox.server import main as sandbox_main

    return sandbox_main(args.sandbox_args) or 0


def cmd_demo(args: Any) -> int:
    from worker.cli.demo import run_demo

    return run_demo(timeout=args.timeout, start_worker=args.start_worker)


def cmd_bench(args: Any) -> int:
    from bench.run import main as bench_main

    return bench_main(args.bench_args) or 0


def cmd_flower(args: Any) -> int:
    """Flower, locked by the package (worker/ops/flower.py), on 127.0.0.1 unless an address or socket is given."""
    from worker.broker.app import app
    from worker.ops import flower

    flower.install()
    argv = list(args.flower_args)
    if not any(arg.lstrip("-").replace("-", "_").startswith(("address", "unix_socket")) for arg in argv):
        argv.append("--address=127.0.0.1")
    return app.start(["flower", *argv]) or 0


def add_parsers(sub: Any) -> None:
    """The demo, the sandbox and the benchmark."""
    p = sub.add_parser("demo", help="run the seed scenario (3.00 sale + void, 4.00 sale + skipped void)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each outcome")
    p.add_argument("--start-worker", choices=("auto", "always", "never"), default="auto",
                   help="start a local worker (auto: only when none answers a ping)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sandbox", help="run the BluePay-compatible sandbox gateway", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("bench", help="benchmark ours against a bare Celery baseline", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("flower", help="Flower, read-only and behind authentication (FLOWER_BASIC_AUTH), on 127.0.0.1 "
                       "unless --address is given; takes Flower's options", add_help=False)
    p.add_argument("flower_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_flower)

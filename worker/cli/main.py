"""The ``payments`` command: one parser over the command groups (worker/cli/: local, records, operator, enqueue,
monitoring, webhooks, console); each group only parses, calls its wing and prints.

Errors a user can act on (Redis down, gateway unreachable, bad arguments) end in one line on stderr
and exit status 2, not a traceback (``worker.cli.output``).
"""
from __future__ import annotations

import argparse
import sys

import redis

from worker.cli import enqueue, local, monitoring, operator, records
from worker.cli.output import EXIT_USAGE, OUTCOME_LINES, CommandError, format_outcome
from worker.cli.webhooks import add_webhooks_commands

__all__ = ["EXIT_USAGE", "OUTCOME_LINES", "CommandError", "format_outcome", "build_parser", "main"]

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payments", description="Payments worker: BluePay jobs on Celery.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (local, records, operator, enqueue, monitoring):
        group.add_parsers(sub)
    add_webhooks_commands(sub)
    __import__("worker.cli.console", fromlist=["add_parser"]).add_parser(sub)
    return parser


# Subcommands whose arguments belong to another parser. argparse's REMAINDER does not take arguments that
# start with "-" ("payments sandbox --port 8001" failed), so they are handed over untouched.
PASS_THROUGH = {"sandbox": "sandbox_args", "bench": "bench_args", "flower": "flower_args"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in PASS_THROUGH:
        args = parser.parse_args(argv[:1])
        setattr(args, PASS_THROUGH[argv[0]], argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        status: int = args.func(args)  # every group's command returns its exit status
        return status
    except CommandError as exc:
        print(f"payments: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"payments: error: cannot reach Redis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

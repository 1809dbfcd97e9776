"""``payments console``: the operator console in the browser (worker/console/, docs/console.md), and
``payments console adduser NAME viewer|operator`` (the password from standard input, kept hashed)."""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from worker.cli.output import CommandError


def cmd_console(args: Any) -> int:
    if args.action == "adduser":
        return cmd_adduser(args)
    from worker.console.serve import serve
    from worker.services import services

    return serve(services(), host=args.host, port=args.port)


def read_password(stdin: Any = None) -> str:
    """Without echo at a terminal (asked twice); otherwise the first line of standard input."""
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise CommandError("the passwords differ")
        return first
    line: str = stdin.readline(4096)
    return line.rstrip("\r\n")


def cmd_adduser(args: Any) -> int:
    from worker.console.users import ROLES, UsersError, add_user, users_file

    if args.name is None or args.role not in ROLES:
        raise CommandError("usage: payments console adduser NAME viewer|operator (the password on standard input)")
    path = users_file()
    try:
        add_user(path, args.name, args.role, read_password())
    except UsersError as exc:
        raise CommandError(str(exc)) from None
    print(f"{args.name} ({args.role}) kept in {path}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("console", help="the operator console in the browser (or: console adduser NAME ROLE)",
                       description="Serve the operator console (login required; docs/console.md), or add a user: "
                                   "payments console adduser NAME viewer|operator, the password on standard input.")
    p.add_argument("action", nargs="?", choices=("serve", "adduser"), default="serve", help=argparse.SUPPRESS)
    p.add_argument("name", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("role", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="default 8090")
    p.set_defaults(func=cmd_console)

"""``payments archive``: move final records to the archive now (the operation is worker/archive/retention.py's
``archive_in_rounds``; this parses, calls and prints)."""
from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from worker.cli.common import iso, ping_redis, services
from worker.cli.output import CommandError


def cmd_archive(args: Any) -> int:
    from worker.archive import ArchiveUnavailable
    from worker.archive.retention import CutoffRefused, SweepRunning, archive_cutoff, archive_in_rounds, restore_keys
    from worker.payments.sweep import LOCK_NAME

    svc = services()
    settings, archive = svc.settings, svc.archive
    try:
        if args.migrate:
            print(f"archive {archive.where}: schema at revision {archive.migrate()}")
            if args.before is None and not args.restore_keys:
                return 0
        ping_redis(svc)
        if args.restore_keys:
            print(json.dumps(restore_keys(svc.store, archive, settings.key_retention), sort_keys=True))
            return 0
        store = svc.store
        cutoff = archive_cutoff(settings, store.now(), None if args.before is None else parse_date(args.before))
        counts = archive_in_rounds(store, archive, cutoff, settings, lock_name=LOCK_NAME, progress=_archived,
                                   on_handover=lambda: print("a sweep took the lock between rounds: it archives the "
                                                             "rest", file=sys.stderr))
    except (SweepRunning, CutoffRefused) as exc:
        raise CommandError(str(exc)) from None
    except ArchiveUnavailable as exc:
        raise CommandError(f"{exc}; nothing more archived or deleted (the records stay in Redis)") from None
    print(json.dumps({"before": iso(cutoff), **counts}, sort_keys=True))
    return 0


def _archived(count: int) -> None:
    if count:
        print(f"... {count} archived", file=sys.stderr)


def parse_date(text: str) -> float:
    """``2026-10-01`` or an ISO-8601 time (``2026-10-01T12:00:00Z``; without an offset: UTC) -> epoch seconds."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"--before: {text!r} is not a date (YYYY-MM-DD) or an ISO-8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

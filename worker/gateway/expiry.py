"""The gateway's own fence against late sends: ``TRANS_SUBMIT_TIMESTAMP`` + ``TRANS_EXPIRE_PERIOD`` (bp10emu).

BluePay's bp10emu text (section TRANSACTION TIMESTAMP): a request whose ``TRANS_SUBMIT_TIMESTAMP``
(``YYYY-MM-DD HH:MM:SS``, US Central time) is more than ``TRANS_EXPIRE_PERIOD`` (``N MINUTES``) old is answered
``Result=ERROR``, ``MESSAGE=TRANSACTION TOO OLD`` and is not saved. Neither field is part of the seal.

Each money-moving attempt is stamped with the Redis server time at which its lease was last checked, so an attempt
sent after an unbounded pause (SIGSTOP, swap, a frozen VM) is refused by the gateway itself. :func:`accepted_until`
is the last moment (epoch seconds, on a correct clock) such an attempt can still be accepted: the takeover of an
operation whose holder stopped answering waits for it (plus the commit horizon) before it sends again.

Pure: no I/O.
"""
from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["CENTRAL", "TOO_OLD", "TOO_OLD_MESSAGES", "submit_fields", "submit_stamp", "accepted_until"]

CENTRAL = ZoneInfo("America/Chicago")
#: The gateway's MESSAGE for an expired request (not saved: nothing was charged by that attempt).
TOO_OLD = "TRANSACTION TOO OLD"
#: Both spellings BluePay publishes: the bp10emu text's and BluePay_MESSAGE_values.txt's ("TX Validity Period has
#: expired").
TOO_OLD_MESSAGES = frozenset({TOO_OLD, "TRANSACTION IS TOO OLD"})
_FORMAT = "%Y-%m-%d %H:%M:%S"
#: The period is counted in whole minutes; a gateway may round the age it compares to the minute.
MINUTE = 60.0


def submit_stamp(epoch: float) -> str:
    """``epoch`` as BluePay's Central-time ``YYYY-MM-DD HH:MM:SS`` (seconds truncated: never later than ``epoch``)."""
    return _stamp_of(int(epoch))


# Both per whole second, cached: every attempt asks for them (stamp and fence window) and a busy worker stamps many
# attempts in the same second; the time-zone arithmetic was ~2 % of a payment's worker CPU.
@lru_cache(maxsize=64)
def _stamp_of(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).astimezone(CENTRAL).strftime(_FORMAT)


@lru_cache(maxsize=64)
def _latest_reading(second: int) -> float:
    local = datetime.strptime(_stamp_of(second), _FORMAT)
    readings = (local.replace(tzinfo=CENTRAL, fold=0), local.replace(tzinfo=CENTRAL, fold=1))
    return max(reading.timestamp() for reading in readings)


def submit_fields(epoch: float, expire_minutes: int) -> dict[str, str]:
    """The two bp10emu fields of an attempt stamped at ``epoch`` (Redis server time of its lease check)."""
    if isinstance(expire_minutes, bool) or not isinstance(expire_minutes, int) or expire_minutes < 1:
        raise ValueError("expire_minutes must be a whole number of minutes >= 1")
    return {"TRANS_SUBMIT_TIMESTAMP": submit_stamp(epoch), "TRANS_EXPIRE_PERIOD": f"{expire_minutes} MINUTES"}


def accepted_until(epoch: float, expire_minutes: int, skew_margin: float) -> float:
    """The latest epoch at which a request stamped at ``epoch`` may still be accepted by the gateway.

    The stamp is a local Central time without an offset: in the hour repeated when daylight saving ends, the
    gateway may read it as the later of the two instants, so the later one counts. Then the period, one more
    minute (the period is whole minutes and the gateway's rounding is not published), and ``skew_margin``: how
    far the gateway's clock may lag Redis's."""
    return _latest_reading(int(epoch)) + expire_minutes * 60.0 + MINUTE + skew_margin

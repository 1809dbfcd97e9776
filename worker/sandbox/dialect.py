"""How the sandbox answers where BluePay's published texts are silent: one switch per open question.

The defaults are what the sources show (docs/bluepay.md names them); every other value is an answer a real
gateway could reasonably give, so that the client can be tested against each of them instead of against
whatever the sandbox happened to choose. Nothing here is something our client asks for.

=================  ==========  =====================================================================
switch             default     other values (what the sources leave open)
=================  ==========  =====================================================================
stq_stamp          ``off``     ``on``: stq rows and stq/report errors carry TPS_HASH_TYPE, BP_STAMP_DEF and
                               BP_STAMP (BluePay's stq text, 2013-05-17, lists no stamp)
stq_matches        ``newest``  ``oldest``: the first match; ``all``: every match, one row per line (several
                               matches under one ORDER_ID are not documented)
stq_no_match       ``empty``   ``error``: HTTP 400 ``STATUS=E&MESSAGE=NO MATCHING TRANSACTIONS``;
                               ``blank_row``: 200 with the documented names and empty values
stq_names          ``lower``   ``upper``: upper-case names (the stq text writes them lower case; BluePay's
                               Python library 3.0.7 reads ``ID``, ``TRANS_TYPE``, ``AMOUNT``... from stq)
stq_values         ``exact``   ``trimmed``: search values and stored ones compared without surrounding spaces
report_quoting     ``backslash``  ``csv``: quoted CSV instead of the text's backslash before each comma in a value
report_errors      ``line``    ``pairs``: a 400 body ``STATUS=E&MESSAGE=...`` instead of the text's single line
token_source       ``any``     ``approved``: a SALE/AUTH with RRNO = an earlier id (a token) charges only an approved
                               transaction's card (else COULD NOT LOCATE ORIGINAL TRANSACTION); ``any``: any
                               transaction that carried a card (the bp10emu text names no such rule)
unknown_token      ``error_reading``  ``could_not_locate``: a token (RRNO on SALE/AUTH) that names no usable
                               transaction is answered ``COULD NOT LOCATE ORIGINAL TRANSACTION`` ("unable to lookup
                               the master_id") instead of ``Error reading master transaction`` ("unable to locate
                               tokenized transaction"); BluePay_MESSAGE_values.txt lists both
update_auth        ``refused``  ``allowed``: an AUTH may be UPDATEd like a SALE (the message list only says "Cannot
                               UPDATE a <TRANS TYPE>: attempt to tip UPDATE a VOID or AUTH")
stored_id          ``established``  ``none``: replies never carry STORED_ID (BluePay's samples read it "used or
                               established by transaction" but print it only in comments)
bp10emu_stamp_def  ``RRNO ISSUE_DATE Result``  (seen in live TEST replies of 2023) any space-separated
                               list of reply fields, used when the request sends no BP_STAMP_DEF
=================  ==========  =====================================================================

The duplicate rule (BluePay publishes neither its matching rule nor its window) is the sandbox's
``duplicate_window`` (0 = off), kept where it always was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Dialect", "DialectError", "OBSERVED_STAMP_DEF", "parse_dialect"]

#: The BP_STAMP_DEF live bp10emu replies carried in 2023 (TEST mode, TokenEx's published examples).
OBSERVED_STAMP_DEF = "RRNO ISSUE_DATE Result"

_CHOICES = {
    "stq_stamp": ("off", "on"),
    "stq_matches": ("newest", "oldest", "all"),
    "stq_no_match": ("empty", "error", "blank_row"),
    "stq_names": ("lower", "upper"),
    "stq_values": ("exact", "trimmed"),
    "report_quoting": ("backslash", "csv"),
    "report_errors": ("line", "pairs"),
    "token_source": ("any", "approved"),
    "stored_id": ("established", "none"),
    "update_auth": ("refused", "allowed"),
    "unknown_token": ("error_reading", "could_not_locate"),
}
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DialectError(ValueError):
    """A dialect setting that is not one of the documented answers."""


@dataclass(frozen=True)
class Dialect:
    stq_stamp: str = "off"
    stq_matches: str = "newest"
    stq_no_match: str = "empty"
    stq_names: str = "lower"
    stq_values: str = "exact"
    report_quoting: str = "backslash"
    report_errors: str = "line"
    token_source: str = "any"
    stored_id: str = "established"
    update_auth: str = "refused"
    unknown_token: str = "error_reading"
    bp10emu_stamp_def: str = OBSERVED_STAMP_DEF

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def changed(self, settings: Mapping[str, Any]) -> Dialect:
        """A copy with ``settings`` applied; raises DialectError naming the first bad one."""
        if not isinstance(settings, Mapping):
            raise DialectError("the dialect is a JSON object of switches")
        values: dict[str, str] = {}
        for name, value in settings.items():
            if name == "bp10emu_stamp_def":
                names = str(value).split() if isinstance(value, str) else []
                if not names or not all(_FIELD_NAME.match(n) for n in names):
                    raise DialectError("bp10emu_stamp_def must be a space-separated list of reply field names")
                values[name] = " ".join(names)
                continue
            choices = _CHOICES.get(name)
            if choices is None:
                raise DialectError(f"unknown dialect switch {name!r} (known: {', '.join(sorted(self.to_json()))})")
            if value not in choices:
                raise DialectError(f"{name} must be one of {', '.join(choices)}")
            values[name] = value
        return replace(self, **values)


def parse_dialect(text: str | None) -> Dialect:
    """``key=value,key=value`` (the CLI's --dialect and env SANDBOX_DIALECT) -> Dialect."""
    settings: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise DialectError(f"dialect setting {part.strip()!r} is not key=value")
        settings[name.strip()] = value.strip()
    return Dialect().changed(settings)

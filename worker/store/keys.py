"""The store's key names under one prefix (the layout is drawn in :mod:`worker.store`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoreKeys:
    prefix: str = "payments:"
    trans: str = field(init=False)
    time: str = field(init=False)
    non_final: str = field(init=False)
    open_auths: str = field(init=False)
    voids_due: str = field(init=False)
    reflect_due: str = field(init=False)
    audit: str = field(init=False)
    outbox: str = field(init=False)
    outbox_ts: str = field(init=False)
    status_counts: str = field(init=False)
    unknown: str = field(init=False)
    retrying: str = field(init=False)
    needs_human: str = field(init=False)
    stats: str = field(init=False)
    sweep_last: str = field(init=False)
    customer_tokens: str = field(init=False)

    def __post_init__(self) -> None:
        p = self.prefix
        for name, suffix in (("trans", "idx:trans"), ("time", "idx:time"), ("non_final", "idx:non_final"),
                             ("open_auths", "idx:open_auths"), ("voids_due", "idx:voids_due"),
                             ("reflect_due", "idx:reflect_due"), ("audit", "audit"), ("outbox", "outbox"),
                             ("outbox_ts", "idx:outbox"), ("status_counts", "idx:status_counts"),
                             ("unknown", "idx:unknown"), ("retrying", "idx:retrying"),
                             ("needs_human", "idx:needs_human"), ("stats", "stats"), ("sweep_last", "sweep:last"),
                             ("customer_tokens", "idx:customer_tokens")):
            object.__setattr__(self, name, p + suffix)

    def record(self, payment_id: str) -> str:
        return f"{self.prefix}op:{payment_id}"

    def history(self, payment_id: str) -> str:
        return f"{self.prefix}hist:{payment_id}"

    def kept(self, payment_id: str) -> str:
        """The key index entry of a record that left Redis (retention): its fingerprint and outcome."""
        return f"{self.prefix}key:{payment_id}"

    def merchant_time(self, merchant: str) -> str:
        """The time index of one account other than ``default`` (written by claim.lua, removed by forget.lua)."""
        return f"{self.prefix}idx:merchant:{merchant}:time"

    def merchant_counts(self, merchant: str) -> str:
        """Records of one account other than ``default`` by status, every status (the record scripts keep it)."""
        return f"{self.prefix}idx:merchant:{merchant}:counts"

    def merchant_index(self, merchant: str, name: str) -> str:
        """``unknown`` or ``retrying`` of one account other than ``default`` (as ``idx:unknown`` / ``idx:retrying``)."""
        return f"{self.prefix}idx:merchant:{merchant}:{name}"

    @property
    def merchant_since(self) -> str:
        """When the first record was put in an account's time index (0: every record is, after a recount)."""
        return f"{self.prefix}idx:merchant:since"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def for_record(self, payment_id: str) -> list[str]:
        """KEYS of every record script (``scripts/common.lua``): the record and its key index entry; the scripts
        derive the shared indexes' keys from the prefix the two share."""
        return [self.record(payment_id), self.kept(payment_id)]

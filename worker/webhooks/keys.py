"""The webhook wing's Redis keys, under the store's prefix (``payments:wh:...``); drawn in :mod:`worker.webhooks`."""
from __future__ import annotations

from dataclasses import dataclass, field

#: The consumer group that turns the store's audit stream into events.
GROUP = "webhooks"


@dataclass(frozen=True)
class WebhookKeys:
    prefix: str = "payments:"
    audit: str = field(init=False)
    events: str = field(init=False)
    due: str = field(init=False)
    pending: str = field(init=False)
    attempts: str = field(init=False)
    failed: str = field(init=False)
    failed_why: str = field(init=False)
    stats: str = field(init=False)
    endpoints: str = field(init=False)
    lock: str = field(init=False)
    intake_seen: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "audit", self.prefix + "audit")  # the store's (worker/store/keys.py)
        for name in ("events", "due", "pending", "attempts", "failed", "failed_why", "stats", "endpoints", "lock",
                     "intake_seen"):
            object.__setattr__(self, name, f"{self.prefix}wh:{name}")

    def event(self, event_id: str) -> str:
        return f"{self.prefix}wh:ev:{event_id}"

    def sequence(self, payment_id: str) -> str:
        return f"{self.prefix}wh:seq:{payment_id}"

    def state(self, endpoint_id: str) -> str:
        return f"{self.prefix}wh:state:{endpoint_id}"

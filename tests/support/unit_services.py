"""The worker's own wiring (``worker.services.Services``: card vault, card keys, the flow built from settings) over
the in-memory store and a fake gateway, for the task-policy and sweep unit tests. There is no Redis: asking for
it is a test failure."""
from __future__ import annotations

from typing import Any

from worker.config import Settings
from worker.services import Services


class UnitServices(Services):
    def __init__(self, settings: Settings, store: Any, gateway: Any):
        super().__init__(settings)
        self.store = store  # replaces the lazily built Redis store and BluePay client
        self.gateway = gateway

    @property
    def redis(self):
        raise AssertionError("unit tests have no Redis: UnitServices.redis was used")

"""Shared fixtures. The test process is a producer: it gets the same Redis and card key as workers."""
from tests.support.env import apply_to_this_process

apply_to_this_process()

import os  # noqa: E402  (after the environment is applied, as every test module expects)

import pytest  # noqa: E402

#: ``PAYMENTS_SLOW_TESTS=1`` runs the tests marked ``slow`` too: scenarios of minutes whose figures are in
#: docs/reliability.md; CI (25 minutes for everything) leaves them out.
RUN_SLOW = os.environ.get("PAYMENTS_SLOW_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: runs with PAYMENTS_SLOW_TESTS=1 (figures in docs/reliability.md)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)

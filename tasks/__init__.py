"""An alias of :mod:`worker.tasks` (the public contract ``from tasks import sale, auth, capture, refund, void``).

The tasks live in ``worker/tasks/``, where a merchant's own ``tasks.py`` cannot shadow them; in an application that
has one, import ``from worker.tasks import sale``. ``tasks.payments`` and ``tasks.reconciliation`` are the same
modules as ``worker.tasks.payments`` and ``worker.tasks.reconciliation``.
"""
import sys

from worker.tasks import (
    auth,
    capture,
    credit,
    payments,
    reconcile_report,
    reconciliation,
    refund,
    sale,
    sweep,
    update,
    void,
)

sys.modules[__name__ + ".payments"] = payments
sys.modules[__name__ + ".reconciliation"] = reconciliation

__all__ = ["sale", "auth", "credit", "update", "capture", "refund", "void", "sweep", "reconcile_report"]

"""An alias of :mod:`worker.broker.celeryconfig` (the Celery settings of the payments worker), kept for
``app.config_from_object("celeryconfig")`` and ``from celeryconfig import config_for``. The app itself reads
``worker.broker.celeryconfig``, so a merchant's own ``celeryconfig.py`` on the path cannot replace ours."""
from worker.broker.celeryconfig import *  # noqa: F403  (every setting and config_for, as Celery reads them from a module)

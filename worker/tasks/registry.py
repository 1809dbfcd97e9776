"""A table of task functions, made into tasks of an app only when the composition root registers them
(``worker.broker.app.create_app``): importing a tasks module builds nothing and binds to no app."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery


class TaskTable:
    def __init__(self) -> None:
        self.entries: list[tuple[Callable[..., Any], dict[str, Any]]] = []

    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Keep ``fn`` with Celery's task ``options`` (name, base, bind...); ``fn`` itself is returned as it is."""
        def keep(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.entries.append((fn, options))
            return fn

        return keep

    def register(self, app: Celery) -> None:
        """Make every kept function a task of ``app`` (made when the app is finalized, as ``@app.task`` does).
        Not shared: an app that is not a payments app never gets them."""
        for fn, options in self.entries:
            app.task(shared=False, **options)(fn)

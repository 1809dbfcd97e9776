"""The one module that owns Celery: the app, the payment task base class and the logging hooks.

``PaymentTask.apply_async`` is the publish path of every payment task (``delay``, ``s(...).delay()``,
chains and ``retry``): it seals the ``card`` argument with the card vault before the message reaches
the broker, and sets ``argsrepr``/``kwargsrepr`` to a masked view, which is what task events and
Flower show.
"""
from __future__ import annotations

import logging

from celery import Celery, Task, signals

from worker.services import services

app = Celery("payments")
app.config_from_object("celeryconfig")


def _masked(value):
    from worker.vault import mask_card

    return mask_card(value) if isinstance(value, dict) else "<card>"


class PaymentTask(Task):
    """Base of the payment tasks: seals card data on publish and masks the arguments' repr."""

    # Position of `card` in the positional arguments of tasks that take one (sale/auth).
    card_position: int | None = None
    # tasks/payments.py bounds every kind of re-queue itself (outage, busy lease, Redis down).
    max_retries = None

    def apply_async(self, args=None, kwargs=None, **options):
        args = list(args or ())
        kwargs = dict(kwargs or {})
        card_in_args = self.card_position is not None and len(args) > self.card_position
        if card_in_args:
            args[self.card_position] = self._seal(args[self.card_position])
        elif "card" in kwargs:
            kwargs["card"] = self._seal(kwargs["card"])
        if card_in_args or "card" in kwargs:
            shown_args = list(args)
            if card_in_args:
                shown_args[self.card_position] = _masked(args[self.card_position])
            shown_kwargs = {k: (_masked(v) if k == "card" else v) for k, v in kwargs.items()}
            options["argsrepr"] = repr(tuple(shown_args))
            options["kwargsrepr"] = repr(shown_kwargs)
        return super().apply_async(tuple(args), kwargs, **options)

    @staticmethod
    def _seal(card):
        vault = services().vault
        if isinstance(card, dict) and not vault.is_sealed(card) and card.get("number") is not None:
            return vault.seal(card)
        return card


def _add_scrubber(logger=None, **_):
    from worker.gateway.scrub import ScrubbingFilter

    targets = [logger] if logger is not None else []
    targets.append(logging.getLogger())
    for target in targets:
        for handler in target.handlers:
            if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
                handler.addFilter(ScrubbingFilter())


signals.after_setup_logger.connect(_add_scrubber, weak=False)
signals.after_setup_task_logger.connect(_add_scrubber, weak=False)


@signals.worker_init.connect(weak=False)
@signals.beat_init.connect(weak=False)
def _check_card_key(**_):
    """LIVE mode without PAYMENTS_CARD_KEY refuses to start; TEST warns and uses the development key."""
    from worker.vault import ConfigurationError

    try:
        services().vault
    except ConfigurationError as exc:
        # SystemExit, because Celery logs and swallows ordinary exceptions raised by signal handlers.
        raise SystemExit(f"payments: refusing to start: {exc}") from None

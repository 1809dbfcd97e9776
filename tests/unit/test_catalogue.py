"""The one table of payment tasks (worker/catalogue.py) matches the task functions Celery runs."""
from __future__ import annotations

import inspect

import pytest

import tasks
from worker.catalogue import CARD_ARGUMENT, OUTBOX_TASKS, PAYMENT_TASKS


@pytest.mark.parametrize("name", sorted(PAYMENT_TASKS))
def test_each_task_function_has_the_parameters_the_catalogue_names(name):
    spec = PAYMENT_TASKS[name]
    task = getattr(tasks, spec.operation)
    assert task.name == name and task.operation == spec.operation
    assert tuple(inspect.signature(task.run).parameters) == spec.parameters
    assert task.carries_card == (spec.card_parameter is not None)


def test_only_sale_auth_and_credit_carry_a_card_and_every_payment_message_is_kept_in_the_outbox():
    assert CARD_ARGUMENT == {"payments.sale": 1, "payments.auth": 1, "payments.credit": 1}
    assert set(PAYMENT_TASKS) == OUTBOX_TASKS

"""Signed outcome webhooks (Standard Webhooks), delivered at least once (docs/webhooks.md).

* :mod:`~worker.webhooks.events`: which transitions are events and what they say (pure);
* :mod:`~worker.webhooks.signing`: ``whsec_`` secrets and the Standard Webhooks headers (``standardwebhooks``);
* :mod:`~worker.webhooks.schedule`: WEBHOOK_RETRY_SCHEDULE arithmetic (pure);
* :mod:`~worker.webhooks.endpoints`: the static endpoint and those ``payments webhooks add`` keeps in Redis;
* :mod:`~worker.webhooks.deliveries`: the schedule in Redis (scripts in :mod:`~worker.webhooks.scripts`);
* :mod:`~worker.webhooks.intake`: the store's audit stream -> events (a consumer group);
* :mod:`~worker.webhooks.deliverer`: one drain: intake, then POST what is due.

Key layout (``P`` is the store's prefix)::

    P audit                 stream  the store's, one entry per transition, written by the transition's own Lua
                                    (consumer group ``webhooks`` reads it)
    P wh:ev:<event id>      hash    type, payment_id, ts, sequence, body (the JSON every delivery sends); expires
                                    after WEBHOOK_EVENT_RETENTION
    P wh:seq:<payment id>   string  the payment's last event sequence number (same expiry)
    P wh:events             zset    event id -> event time (replay --since; trimmed by age)
    P wh:due                zset    "<event id> <endpoint id>" -> when due (a claim pushes it out)
    P wh:pending            zset    the same deliveries -> event time (the oldest undelivered event's age)
    P wh:attempts           hash    delivery -> failed attempts so far
    P wh:failed, wh:failed_why  zset, hash  deliveries given up (after the last attempt, or endpoint gone/disabled)
    P wh:stats              hash    counters: events, delivered, failed_attempts, exhausted, abandoned, replayed,
                                    endpoints_disabled (the exporter's payments_webhook_* metrics)
    P wh:endpoints          hash    endpoint id -> JSON {url, secrets, events, created_at}
    P wh:state:<endpoint>   hash    disabled, disabled_reason, failing_since, last_error, last_success
    P wh:lock               string  one drain at a time
    P wh:intake_seen        string  when a process with an endpoint last read the audit stream (Redis time)
"""

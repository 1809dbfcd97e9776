"""Flower's configuration file, read by Flower from its working directory only (``celery -A worker flower`` run
here, or ``--conf=PATH``).

It locks nothing: authentication, read-only mode and the payment status pages come from the package
(worker/ops/flower.py), wherever Flower starts. Site settings may go here, under Flower's option names
(``port``, ``url_prefix``, ``max_tasks``...); ``read_only`` and the refusal to run without authentication cannot
be turned off.
"""

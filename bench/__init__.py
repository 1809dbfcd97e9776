"""Benchmarks: ``bench.run`` (``payments bench``: ours against the bare-Celery ``bench.baseline``)."""

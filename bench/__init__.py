"""Benchmarks: ``bench.run`` (``payments bench``: ours against the bare-Celery ``bench.baseline``).

Nothing in this package imports ``tests`` (it is installed; the tests are not).
"""

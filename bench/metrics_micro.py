"""CPU the worker's metric calls cost per payment, alone: ``python -m bench.metrics_micro``.

What one approved sale tells the observer (in flight +1/-1, one gateway attempt, one outcome), in prometheus-client's
multiprocess mode as a worker runs it (mmap files in a throw-away directory). ``payments bench --metrics-ab`` measures
the whole worker with metrics on and off; this isolates the calls, which the whole-worker ratio cannot resolve on a
busy host (its runs vary by more than the cost).
"""
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
d = tempfile.mkdtemp(prefix="metrics-micro-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
from worker.ops.metrics import WorkerMetrics  # noqa: E402  (after the directory is set: multiprocess values)

m = WorkerMetrics().for_merchant("default")  # as a worker's flow and gateway client hold it


def one_payment():
    m.in_flight("sale", 1)
    m.request("bp10emu", "approved", 0.0123)
    m.outcome("sale", "APPROVED", "3.00")
    m.in_flight("sale", -1)


def main() -> int:
    for _ in range(1000):
        one_payment()
    runs = []
    for _ in range(7):
        n = 20000
        t = time.process_time()
        for _ in range(n):
            one_payment()
        runs.append((time.process_time() - t) / n * 1e6)
    shutil.rmtree(d, ignore_errors=True)
    print(f"metric calls, multiprocess mode: {statistics.median(runs):.1f} us CPU per payment "
          f"(median of 7 x 20000; runs {[round(r, 1) for r in runs]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

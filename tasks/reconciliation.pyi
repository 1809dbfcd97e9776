# Type stub of the alias tasks/__init__.py installs at run time (sys.modules):
# the module is worker.tasks.reconciliation.
from worker.tasks.reconciliation import *  # noqa: F403

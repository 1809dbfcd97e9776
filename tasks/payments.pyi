# Type stub of the alias tasks/__init__.py installs at run time (sys.modules): the module is worker.tasks.payments.
from worker.tasks.payments import *  # noqa: F403

"""``python -m worker.sandbox --host 127.0.0.1 --port 8001``."""

import sys

from .server import main

sys.exit(main())

"""``python -m worker.cli``: the ``payments`` command."""
import sys

from worker.cli.main import main

sys.exit(main())

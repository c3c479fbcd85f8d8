"""``python -m bench <name> [args...]``: see :mod:`bench.runner`."""

import sys

from bench.runner import main

sys.exit(main())

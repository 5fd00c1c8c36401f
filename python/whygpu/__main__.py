"""``python -m whygpu``: the same command line as the ``whygpu`` script."""

import sys

from .cli import main

sys.exit(main())

"""``python -m whygpu.cli``: the same command line as the ``whygpu`` script."""

import sys

from . import main

sys.exit(main())

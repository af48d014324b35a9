"""``python -m jupyter_sessionpool``: the ``jupyter-sessionpool`` command."""

import sys

from .cli import main

sys.exit(main())

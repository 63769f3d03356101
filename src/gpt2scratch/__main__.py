"""``python -m gpt2scratch``: the ``gpt2scratch`` command, for environments whose scripts folder is not on PATH."""

import sys

from .cli import main

sys.exit(main())

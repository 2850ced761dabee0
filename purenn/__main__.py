"""``python -m purenn``: the same as the ``purenn`` command."""

import sys

from purenn.cli.main import main

sys.exit(main())

"""`python -m sclabel.cli ...`: the same entry point as the `sclabel` command."""

import sys

from sclabel.cli import main

sys.exit(main())

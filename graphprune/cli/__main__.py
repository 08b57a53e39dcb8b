"""`python -m graphprune.cli`, as `python -m graphprune`."""

import sys

from . import main

sys.exit(main())

"""`python -m bertkit` is the `bertkit` command."""

import sys

from bertkit.cli import main

sys.exit(main())

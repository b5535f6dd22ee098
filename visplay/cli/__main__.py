"""`python -m visplay.cli ...` is `visplay ...` (tests and the fault harness start it this way)."""

import sys

from visplay.cli import main

sys.exit(main())

"""``python -m stress.consistency``: run the stress, print its report, exit 1 on a failure."""

import sys

from stress.consistency.cli import main

sys.exit(main())

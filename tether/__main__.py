"""`python -m tether` is the same program as the `tetherctl` console script."""

import sys

from tether.cli.main import main

sys.exit(main())

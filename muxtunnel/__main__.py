"""`python -m muxtunnel` is the `muxtunnel` command."""

import sys

from muxtunnel.cli import main

sys.exit(main())

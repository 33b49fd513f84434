"""`python -m mmdialog ...` (and `torchrun -m mmdialog ...`) runs the same CLI as the `mmdialog` command."""

import sys

from mmdialog.cli import main

sys.exit(main())

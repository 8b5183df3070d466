"""``python -m dnalm`` (and ``torchrun -m dnalm``) runs the command line."""

import sys

from dnalm.cli import main

sys.exit(main())

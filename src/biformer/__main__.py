"""``python -m biformer`` runs the command line (also under ``torchrun -m biformer``)."""

import sys

from .cli import main

sys.exit(main())

"""``python -m simulator`` runs ``expie-sim``."""

import sys

from simulator.cli import main

sys.exit(main())

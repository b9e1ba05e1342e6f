"""``python -m gateway`` runs ``expie-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())

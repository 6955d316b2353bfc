"""``python -m embedforge.demo`` (what ``make demo`` runs): the same as ``embedforge demo``."""

import sys

from embedforge.demo.run import main

sys.exit(main())

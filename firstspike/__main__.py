"""``python -m firstspike`` (also what torchrun launches)."""

import sys

from firstspike.cli import main

sys.exit(main())

"""``python -m bridge`` is ``certpager bridge``."""

import sys

from certpager.cli import main

raise SystemExit(main(["bridge", *sys.argv[1:]]))

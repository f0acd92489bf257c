"""``python -m exporter`` is ``certpager exporter``."""

import sys

from certpager.cli import main

raise SystemExit(main(["exporter", *sys.argv[1:]]))

#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when the running certpager service answers GET /-/healthy with 200.

The image runs either service, so without CERTPAGER_HEALTHCHECK_URL both default addresses are tried
(exporter :9879, bridge :9880) and one answering is enough. Set CERTPAGER_HEALTHCHECK_URL when the service
listens elsewhere (``--web.listen-address``, ``server.listen_address``). Standard library only: the image
has no curl or wget.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_URLS = ("http://127.0.0.1:9879/-/healthy", "http://127.0.0.1:9880/-/healthy")
TIMEOUT = 3.0  # seconds per URL; the HEALTHCHECK's own --timeout bounds the whole run


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(environ: Mapping[str, str] = os.environ) -> int:
    configured = environ.get("CERTPAGER_HEALTHCHECK_URL")
    urls = (configured,) if configured else DEFAULT_URLS
    for url in urls:
        if healthy(url):
            return 0
    print(f"unhealthy: no 200 from {', '.join(urls)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

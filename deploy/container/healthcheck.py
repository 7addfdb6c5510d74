"""The image's HEALTHCHECK: exit 0 when ``GET /healthz`` on this container's spintrail answers 200.

Follows ``SPINTRAIL_PORT`` and speaks HTTPS when ``SPINTRAIL_TLS_CERT_FILE`` is set (the certificate is not
checked: the server's own address is asked, over loopback).
"""

import os
import ssl
import sys
import urllib.request

port = os.environ.get("SPINTRAIL_PORT", "8080")
tls = bool(os.environ.get("SPINTRAIL_TLS_CERT_FILE"))
url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
context = ssl._create_unverified_context() if tls else None
try:
    with urllib.request.urlopen(url, timeout=4, context=context) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)

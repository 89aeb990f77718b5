"""Optional HTTP basic authentication for deployments (every route, including Dash's callbacks).

Basic auth only protects credentials when the page is served over TLS (terminate it in
a reverse proxy); on the default loopback bind it keeps other local users out.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from flask import Flask, Response, request

from foundation.health import HEALTH_PATHS

REALM = "TAPAS dashboard"


def credentials_match(header: str | None, username: str, password: str) -> bool:
    """True when an ``Authorization: Basic ...`` header carries exactly these credentials.

    Both parts are compared in constant time so the check leaks no prefix.

    Examples:
        >>> token = base64.b64encode(b"ops:s3cret").decode()
        >>> credentials_match(f"Basic {token}", "ops", "s3cret")
        True
        >>> credentials_match(f"Basic {token}", "ops", "other")
        False
        >>> credentials_match(None, "ops", "s3cret")
        False
    """
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, given = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    pass_ok = hmac.compare_digest(given.encode(), password.encode())
    return user_ok and pass_ok


def install_basic_auth(server: Flask, username: str, password: str) -> None:
    """Refuse every request without the right credentials (401 with a Basic challenge).

    The health probes (``/healthz``, ``/readyz``) stay open: orchestrators send no credentials.
    """

    @server.before_request
    def _require_auth() -> Response | None:
        if request.path in HEALTH_PATHS:
            return None
        if credentials_match(request.headers.get("Authorization"), username, password):
            return None
        return Response("authentication required\n", 401, {"WWW-Authenticate": f'Basic realm="{REALM}"'})

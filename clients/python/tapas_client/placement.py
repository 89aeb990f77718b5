"""Client of the controller's synchronous placement API: ``POST /v1/placement``.

Request body: a :class:`~contracts.PlacementRequest` as JSON; response: a
:class:`~contracts.PlacementHint` as JSON (HTTP 200). Any other status raises
:class:`PlacementError` with the server's reason. This follows the wire contracts the
Kafka placement path already uses; the HTTP API's OpenAPI document (issue 23, item 5)
is the reference once published, and a test checks the two against each other then.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from contracts import PlacementHint, PlacementRequest, TapasError, decode


class PlacementError(TapasError):
    """The placement API refused the request or could not be reached."""


class PlacementClient:
    """``PlacementClient("http://tapas-controller:9108").place(request) -> PlacementHint``."""

    def __init__(self, base_url: str, *, timeout_s: float = 2.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r}: expected http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def place(self, request: PlacementRequest) -> PlacementHint:
        req = urllib.request.Request(f"{self.base_url}/v1/placement", data=request.to_bytes(), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - scheme checked
                body: bytes = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            raise PlacementError(f"POST {self.base_url}/v1/placement: HTTP {err.code}: {detail}") from err
        except OSError as exc:
            raise PlacementError(f"POST {self.base_url}/v1/placement: {exc}") from exc
        return decode(PlacementHint, body)

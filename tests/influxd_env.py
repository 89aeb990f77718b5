"""A throw-away InfluxDB 1.x server (Debian's ``influxd``) on free loopback ports, for the store tests.

``.ci/run`` starts one the same way and exports ``TAPAS_INFLUXQL_URL``; when that
variable is absent the ``influxql_url`` fixture (tests/conftest.py) starts one here.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from foundation.broker import free_port

#: The variable naming a running InfluxQL server (InfluxDB 1.x, 2.x v1 API or 3.x) for the store tests.
URL_VARIABLE = "TAPAS_INFLUXQL_URL"

_CONFIG = """reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  auth-enabled = {auth}
"""


def influxd_binary() -> str | None:
    """Path of ``influxd`` (Debian package ``influxdb``), or None."""
    return shutil.which("influxd") or ("/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)


def start_influxd(root: Path, *, auth: bool = False, http_port: int | None = None,
                  timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``influxd`` with its data under ``root``; returns the process and its URL once ``/ping`` is 204.

    With ``auth`` the server requires credentials; its first user is created without them
    (``CREATE USER ... WITH ALL PRIVILEGES``), as InfluxDB 1.x allows.
    """
    binary = influxd_binary()
    if binary is None:
        raise FileNotFoundError("influxd not installed (apt-get install influxdb; .ci/run does it)")
    http_port, rpc_port = http_port or free_port(), free_port()
    config = root / "influxd.conf"
    config.write_text(_CONFIG.format(root=root, rpc_port=rpc_port, http_port=http_port,
                                     auth="true" if auth else "false"))
    log = (root / "influxd.log").open("wb")
    proc = subprocess.Popen([binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1) as resp:
                if resp.status == 204:
                    return proc, url
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_influxd(proc)
            tail = (root / "influxd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"influxd did not answer /ping within {timeout_s:.0f} s:\n{tail}")
        time.sleep(0.1)


def stop_influxd(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``influxd`` (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

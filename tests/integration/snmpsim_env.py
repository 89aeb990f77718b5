"""Build (once) and run the snmpsim agent the SNMP collector tests talk to.

snmpsim refuses to run as root and drops to ``nobody``, who cannot read a Python
installed under /root. So the simulator lives in its own virtual environment made
with Debian's ``/usr/bin/python3`` in a world-readable place (``/opt/tapas-snmpsim``),
with ``pysmi`` and the ``snmpsim-data`` recordings of real APC rack PDUs. Tests call
:func:`ensure_snmpsim` (which builds it if absent) and :class:`SnmpSimAgent`.

Run by hand: ``python tests/integration/snmpsim_env.py`` builds the environment.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from foundation.broker import stop_process_group

SNMPSIM_HOME = Path("/opt/tapas-snmpsim")
VENV = SNMPSIM_HOME / "venv"
# cryptography: snmpsim needs it to decrypt SNMPv3 privacy (AES/DES) requests.
PACKAGES = ("snmpsim>=1.1,<2", "snmpsim-data>=1.0,<2", "pysmi>=1.4", "cryptography>=41")
MARKER = VENV / ".tapas-packages"
SYSTEM_PYTHON = Path("/usr/bin/python3")


class SnmpSimUnavailable(RuntimeError):
    """The snmpsim environment could not be built on this machine (the reason says why)."""


def _run(cmd: list[str], timeout_s: float = 600) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SnmpSimUnavailable(f"{' '.join(cmd[:4])} ... failed: {' | '.join(tail)}")


def _world_readable(root: Path) -> None:
    """Give ``nobody`` read (and directory traverse) access to everything under ``root``."""
    _run(["chmod", "-R", "a+rX", str(root)])


def recordings_dir() -> Path:
    """The ``data`` folder of the installed ``snmpsim-data`` package (holds ``UPS/apc-8641.snmprec``)."""
    site = next(VENV.glob("lib/python3*/site-packages"), None)
    if site is None:
        raise SnmpSimUnavailable(f"no site-packages under {VENV}")
    for cand in (site / "snmpsim_data" / "data", VENV / "snmpsim" / "data", site / "data"):
        if (cand / "UPS").is_dir():
            return cand
    hits = list(site.glob("**/UPS/apc-8641.snmprec")) + list(VENV.glob("**/UPS/apc-8641.snmprec"))
    if not hits:
        raise SnmpSimUnavailable("snmpsim-data installed but UPS/apc-8641.snmprec not found")
    return hits[0].parent.parent


def ensure_snmpsim() -> Path:
    """Build the snmpsim virtual environment if it is absent; return its ``bin`` directory.

    Raises:
        SnmpSimUnavailable: when Debian's python3-venv or the PyPI packages cannot be installed.
    """
    responder = VENV / "bin" / "snmpsim-command-responder"
    wanted = "\n".join(PACKAGES)
    if responder.exists() and MARKER.exists() and MARKER.read_text() == wanted:
        return VENV / "bin"
    if not SYSTEM_PYTHON.exists():
        raise SnmpSimUnavailable(f"{SYSTEM_PYTHON} missing (install Debian's python3 and python3-venv)")
    SNMPSIM_HOME.mkdir(parents=True, exist_ok=True)
    try:
        if not (VENV / "bin" / "pip").exists():
            _run([str(SYSTEM_PYTHON), "-m", "venv", str(VENV)])
        _run([str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES])
    except (SnmpSimUnavailable, subprocess.TimeoutExpired):
        shutil.rmtree(VENV, ignore_errors=True)  # a half-built venv must not look ready next time
        raise
    MARKER.write_text(wanted)
    _world_readable(SNMPSIM_HOME)
    if not responder.exists():
        raise SnmpSimUnavailable(f"{responder} missing after install")
    return VENV / "bin"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SnmpSimAgent:
    """An snmpsim command responder on loopback UDP serving the ``snmpsim-data`` recordings.

    The data directory is a world-readable copy (so ``nobody`` can read it) and the
    cache directory is writable by ``nobody``; both are removed on exit.
    """

    def __init__(self, *, recordings: tuple[str, ...] = ("UPS/apc-7902b", "UPS/apc-8641", "UPS/apc-8932"),
                 start_timeout_s: float = 20.0, extra_args: tuple[str, ...] = ()) -> None:
        self.recordings = recordings
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self.port = _free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def start(self) -> SnmpSimAgent:
        bindir = ensure_snmpsim()
        src = recordings_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="snmpsim-", dir=SNMPSIM_HOME))
        for name in self.recordings:  # only what the tests use: indexing every recording takes minutes
            dest = self.data_dir / f"{name}.snmprec"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f"{name}.snmprec", dest)
        cache = self.workdir / "cache"
        cache.mkdir()
        _run(["chmod", "-R", "a+rwX", str(self.workdir)])
        log = self.workdir / "snmpsim.log"
        self.proc = subprocess.Popen(
            [str(bindir / "snmpsim-command-responder"), f"--data-dir={self.data_dir}",
             f"--cache-dir={cache}", f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
             "--process-user=nobody", "--process-group=nogroup", *self.extra_args],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
        )
        self._wait_ready(log)
        return self

    def _wait_ready(self, log: Path) -> None:
        """Poll with a real SNMP GET of sysDescr until the agent answers."""
        from ingest.sources.snmp import SnmpTarget, snmp_get_sync

        deadline = time.monotonic() + self.start_timeout_s

        target = SnmpTarget(host="127.0.0.1", port=self.port, community="UPS/apc-8641", timeout_s=0.5, retries=0)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SnmpSimUnavailable(f"snmpsim exited: {log.read_text()[-800:]}")
            with contextlib.suppress(Exception):
                if snmp_get_sync(target, ["1.3.6.1.2.1.1.1.0"]):
                    return
            time.sleep(0.3)
        tail = log.read_text(errors="replace")[-800:]
        self.stop()
        raise SnmpSimUnavailable(f"snmpsim did not answer within {self.start_timeout_s} s: {tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process_group(proc, 5.0)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> SnmpSimAgent:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(ensure_snmpsim())
    print(recordings_dir())

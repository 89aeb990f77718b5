"""A real ``run_agent`` in its own process, for crash tests: ``python -m tests.agent_proc CONFIG.json``.

Its GPU backend appends every write to a JSON-lines file (flushed and fsync'd before
the call returns, as a driver call would have taken effect), so a test can SIGKILL the
process and still know what the GPUs were left at. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from controller.agent import GpuSetting, NodeAgent, run_agent
from foundation.settings import Settings
from tapas.bootstrap import kafka_clients


@dataclass
class FileRecordingGpuControl:
    """Records each GPU write to ``path`` (one JSON line per call)."""

    path: Path
    num_gpus: int = 4
    default_limit_w: float = 400.0
    dry_run: bool = False  # behaves like a real backend: the agent reports "applied"

    def gpu_count(self) -> int:
        return self.num_gpus

    def default_power_limit_w(self, index: int) -> float:
        return self.default_limit_w

    def apply(self, index: int, setting: GpuSetting) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"gpu": index, "freq": setting.frequency_cap_mhz, "power": setting.power_limit_w,
                                 "pid": os.getpid()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def describe(self) -> str:
        return f"recording {self.num_gpus} GPUs to {self.path}"


def gpu_state(path: Path) -> dict[int, tuple[float | None, float | None]]:
    """What each GPU was last set to, from a recording file."""
    state: dict[int, tuple[float | None, float | None]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            state[rec["gpu"]] = (rec["freq"], rec["power"])
    return state


def main(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    settings = Settings(**cfg["settings"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready_file = Path(cfg["ready_file"])

    def on_ready(_a: NodeAgent) -> None:
        ready_file.write_text(str(os.getpid()))

    run_agent(settings, cfg["server_id"], FileRecordingGpuControl(Path(cfg["record"])),
              clients=kafka_clients(settings), stop=stop,
              commands_topic=cfg["commands"], status_topic=cfg["status"], events_topic=cfg["events"],
              on_ready=on_ready)


if __name__ == "__main__":
    main(sys.argv[1])

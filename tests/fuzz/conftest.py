"""Fuzz-run bookkeeping: print how many generated inputs were judged, and how."""

from __future__ import annotations

import pytest

from tests.fuzz.mutations import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.generated:
        return
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(TALLY.by_kind.items()))
    terminalreporter.write_line(
        f"fuzz: {TALLY.generated} generated inputs judged, {TALLY.accepted} accepted and round-tripped, "
        f"{TALLY.refused} refused (ContractError naming a field, TapasError from a parser, safety-gate refusal), "
        f"{TALLY.crashes} crashing inputs seen incl. hypothesis shrinking (known ones are xfailed) ({kinds})"
    )

"""Print the fault suite's report (``.run/faults/report.jsonl``) as the markdown table that
docs/reliability.md quotes: ``python tests/faults/report_table.py [REPORT]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _s(value: object) -> str:
    return "-" if value is None else f"{value:.2f} s" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| fault (injected at) | time to audio | longest silence | outcome |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['fault']} | {_s(row.get('time_to_audio_s'))} "
            f"| {_s(row.get('longest_silence_s'))} | {row['outcome']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else ".run/faults/report.jsonl")
    print(table([json.loads(line) for line in path.read_text().splitlines() if line.strip()]))

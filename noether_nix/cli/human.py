"""The ``--human`` view: the same data as the envelope, laid out for reading."""

from __future__ import annotations

import json
from typing import Any


def render(command: str, data: Any) -> str:
    if command == "stage list" and isinstance(data, dict):
        lines = [f"{s['id']}  {s['lifecycle']:<10} {s['name'] or '':<24} {s['signature']}" for s in data["stages"]]
        lines.append(f"({data['count']} stages)")
        return "\n".join(lines)
    if command in ("stage test", "stage verify") and isinstance(data, dict):
        marks = {"passed": "✓", "failed": "✗", "skipped": "-"}
        lines = []
        for s in data["stages"]:
            details = s["details"]
            if isinstance(details, dict):  # verify: its problems, or nothing to say
                details = "; ".join(details.get("problems", []))
            lines.append(f"{marks.get(s['status'], '?')} {s['id'][:8]}  {s.get('name') or s.get('description', '')}"
                         + (f"  {details}" if details else ""))
        counts = ", ".join(f"{data[k]} {k}" for k in ("passed", "failed", "skipped") if k in data)
        lines.append(f"({data['total']} stages: {counts})")
        return "\n".join(lines)
    if isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()):
        width = max((len(k) for k in data), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in data.items())
    return json.dumps(data, indent=2, ensure_ascii=False)


def render_event(ev: Any) -> str | None:
    """One line per stage as it starts and ends (live progress on a terminal)."""
    kind = type(ev).__name__
    if kind == "StageStarted":
        return f"  ▶ {ev.node_path}  {ev.name or ev.stage_id[:8]}"
    if kind == "StageFinished":
        extra = f", built in {ev.build_ms} ms" if ev.build_ms else ""
        mark = "✓" if ev.status in ("ok", "cached") else "✗"
        return f"  {mark} {ev.node_path}  {ev.name or ev.stage_id[:8]}  {ev.status} {ev.wall_ms} ms{extra}"
    if kind == "RunWarning":
        return f"  ! {ev.message}"
    return None

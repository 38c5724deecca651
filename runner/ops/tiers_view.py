"""What ``runner ops status`` says about the checkpoint tiers (entrypoint.tiers, entrypoint.mirror):
which tier the current attempt resumed from and at which step, and how far the mirror lags.

Read from what status reads anyway (the current attempt's ``checkpoint_restored`` mark and the
heartbeat's ``sync``): no request of its own.
"""

from __future__ import annotations

from typing import Any

from entrypoint.record.phases import CHECKPOINT_RESTORED
from entrypoint.record.timeline import duration


def tiers_status(phases: dict[str, dict[str, Any]] | None, sync: dict[str, Any] | None) -> dict[str, Any]:
    """``{"resumed_from": {"tier", "step", "skipped"} | None, "mirror": heartbeat's mirror | None}``."""
    detail = ((phases or {}).get(CHECKPOINT_RESTORED) or {}).get("detail") or {}
    resumed = ({"tier": detail["tier"], "step": detail.get("step"), "skipped": detail.get("skipped") or {}}
               if detail.get("tier") else None)
    mirror = (sync or {}).get("mirror")
    return {"resumed_from": resumed, "mirror": mirror if isinstance(mirror, dict) else None}


def _step(v: Any) -> str:
    return "?" if v is None else (str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v))


def tier_lines(t: dict[str, Any]) -> list[str]:
    """Lines for the status page; none for a run that resumed from nothing and has no mirror."""
    lines = []
    r = t.get("resumed_from")
    if r:
        skipped = "; ".join(f"{k}: {v}" for k, v in sorted(r["skipped"].items()) if k != "local"
                            or not str(v).startswith("no stamp"))
        lines.append(f"resumed    from the {r['tier']} checkpoint tier at step {_step(r['step'])}"
                     + (f" ({skipped})" if skipped else ""))
    m = t.get("mirror")
    if m:
        if m.get("step") is None and m.get("written_at") is None:
            lag = "nothing mirrored yet"
        else:
            behind = []
            if m.get("lag_steps") is not None:
                behind.append(f"{_step(m['lag_steps'])} step(s)")
            if m.get("lag_seconds") is not None:
                behind.append(duration(float(m["lag_seconds"])))
            lag = f"at step {_step(m.get('step'))}, " + (" / ".join(behind) + " behind the primary" if behind else
                                                          "lag unknown")
        err = f"; last error: {m['last_error']}" if m.get("last_error") else ""
        lines.append(f"mirror     {m.get('url', '?')}: {lag}{err}")
    return lines

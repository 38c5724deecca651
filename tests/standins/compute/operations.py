"""Zone operations: created by every mutation, DONE at once unless ``operation_seconds`` is set,
listed, waited on and deleted; a replayed ``requestId`` returns the first operation."""

from __future__ import annotations

import time
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import _copy, _not_found, _now_ts
from tests.standins.compute.model import API, _Op, _page


class OperationRecords:
    """The operations part of ``ComputeFake``; runs under its lock."""

    def operations(self, zone: Optional[str] = None, project: Optional[str] = None
                   ) -> list[compute_v1.Operation]:
        """Copies of recorded zone operations, oldest first."""
        with self.lock:
            self._tick()
            ops = [o for o in self._ops.values() if (zone is None or o.zone == zone)
                   and (project is None or o.project == project)]
            return [self._render_op(o) for o in sorted(ops, key=lambda o: o.op.name)]

    # ---- internals: operations --------------------------------------------------------------

    def _new_op(self, project: str, zone: str, op_type: str, target: compute_v1.Instance, *,
                error: Optional[tuple[str, str, int, str]] = None, user: str = "",
                status_message: str = "", immediate: bool = False,
                error_details: Optional[list[compute_v1.ErrorDetails]] = None) -> compute_v1.Operation:
        seq = next(self._op_seq)
        name = (f"operation-{int(time.time() * 1000)}-{seq:013x}-"
                f"{self._rng.getrandbits(32):08x}-{self._rng.getrandbits(32):08x}")
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        ts = _now_ts()
        op = compute_v1.Operation(
            kind="compute#operation", id=next(self._ids), name=name, zone=zone_url,
            operation_type=op_type, target_link=target.self_link, target_id=target.id or None,
            user=user or f"fake-user@{project}.iam.gserviceaccount.com", status="DONE",
            progress=100, insert_time=ts, start_time=ts, end_time=ts,
            self_link=f"{zone_url}/operations/{name}",
        )
        if status_message:
            op.status_message = status_message
        if error:
            code, message, http_code, http_message = error
            op.error = compute_v1.Error(errors=[compute_v1.Errors(code=code, message=message,
                                                                  error_details=error_details or [])])
            op.http_error_status_code, op.http_error_message = http_code, http_message
        done_at = time.monotonic() + (0 if immediate else self.operation_seconds)
        self._ops[(project, zone, name)] = _Op(project, zone, op, done_at)
        return self._render_op(self._ops[(project, zone, name)])

    def _render_op(self, rec: _Op) -> compute_v1.Operation:
        op = _copy(rec.op)
        if time.monotonic() < rec.done_at:
            op.status, op.progress = "RUNNING", 0
            for name in ("end_time", "error", "http_error_status_code", "http_error_message"):
                delattr(op, name)  # absent, not empty: errors show only once DONE
        return op

    def _op_record(self, p: str, zone: str, op: compute_v1.Operation) -> _Op:
        return self._ops[(p, zone, op.name)]

    def _h_op(self, p: str, zone: str, name: str) -> Any:
        rec = self._ops.get((p, zone, name))
        if rec is None:
            raise _not_found(f"projects/{p}/zones/{zone}/operations/{name}")
        return self._render_op(rec)

    def _h_ops_list(self, p: str, zone: str, q: dict[str, str]) -> Any:
        ops = sorted((o for o in self._ops.values() if o.project == p and o.zone == zone),
                     key=lambda o: o.op.name)
        items, token = _page([self._render_op(o) for o in ops], q)
        return compute_v1.OperationList(
            kind="compute#operationList", id=f"projects/{p}/zones/{zone}/operations",
            items=items, self_link=f"{API}/projects/{p}/zones/{zone}/operations",
            next_page_token=token)

    def _h_op_delete(self, p: str, zone: str, name: str) -> Any:
        if self._ops.pop((p, zone, name), None) is None:
            raise _not_found(f"projects/{p}/zones/{zone}/operations/{name}")
        return compute_v1.DeleteZoneOperationResponse()

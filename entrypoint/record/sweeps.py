"""``sweeps/<SWEEP_ID>.json``: which runs a sweep made, so ``ops list/delete --sweep`` read one
object instead of every run's spec.

Written by ``runner sweep`` only: create-only when the sweep is new, then compare-and-swap
(``if_generation_match``) when it records which members it submitted. The members are listed
before any of them is created, so a sweep that dies part-way still names every run it meant to
make; ``submitted`` says which it saw created, and each member's own ``state.json`` is the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from entrypoint.record.damaged import DamagedRecord, load_object
from entrypoint.record.documents import SCHEMA_VERSION, dump, utcnow
from entrypoint.store import Store

SWEEPS = "sweeps/"


def sweep_doc_name(sweep_id: str) -> str:
    return f"{SWEEPS}{sweep_id}.json"


@dataclass
class SweepDoc:
    """One sweep: its command template, its members (``{"run_id", "params"}``, in index order),
    the image every member runs (pinned once), the queue settings, and the metric to rank by."""

    sweep_id: str
    command: list[str]  # the template, with its {name} placeholders
    runs: list[dict[str, Any]]
    image: str
    max_concurrent: int | None = None
    priority: int = 0
    metric: dict[str, str] | None = None  # {"name": "loss", "goal": "minimize"}
    submitted: list[str] = field(default_factory=list)
    source: str | None = None  # the sweep file's name, for people
    created_at: float = field(default_factory=utcnow)
    updated_at: float = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION
    # Fields a newer runner wrote, kept as they were when this version rewrites the document
    # (as RunState.extra: readers keep what they do not know).
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d.pop("extra"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepDoc":
        known = set(cls.__dataclass_fields__) - {"extra"}
        doc = cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})
        if not isinstance(doc.runs, list) or not all(isinstance(r, dict) and "run_id" in r for r in doc.runs):
            raise ValueError("field 'runs' is not a list of {run_id, params}")
        return doc


def read_sweep(store: Store, sweep_id: str) -> tuple[SweepDoc, int] | None:
    """The sweep and its generation (for ``update_sweep``); None if there is none;
    ``DamagedRecord`` if it cannot be read."""
    name = sweep_doc_name(sweep_id)
    blob = store.read(name)
    if blob is None:
        return None
    d = load_object(name, blob.data)  # DamagedRecord for a torn or non-object document
    try:
        return SweepDoc.from_dict(d), blob.generation
    except (ValueError, TypeError) as e:
        raise DamagedRecord(name, str(e)) from None


def create_sweep(store: Store, doc: SweepDoc) -> int:
    """Create-only: ``PreconditionFailed`` when a sweep of that id exists (read it and compare)."""
    return store.write(sweep_doc_name(doc.sweep_id), dump(doc.to_dict()), if_generation_match=0)


def update_sweep(store: Store, doc: SweepDoc, generation: int) -> int:
    """Compare-and-swap over the generation read: two reruns of one sweep cannot drop each
    other's ``submitted``; the loser gets ``PreconditionFailed``, re-reads and merges."""
    doc.updated_at = utcnow()
    return store.write(sweep_doc_name(doc.sweep_id), dump(doc.to_dict()), if_generation_match=generation)

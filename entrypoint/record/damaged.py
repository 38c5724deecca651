"""``DamagedRecord``: the one error every reader of the run record raises for an object it cannot read.

A record object can be torn (a truncated upload, a full disk, a hand edit, a bug in another
version): not JSON, empty, JSON but not an object, or an object whose fields have the wrong
types. Before this module each reader failed its own way (``JSONDecodeError``, ``KeyError``,
``TypeError`` deep in a caller), so one torn object in one run broke every command that looked
at the whole store. Now every reader raises this one type, whose message names the object and
what is wrong with it, so callers catch one thing and turn it into a per-run error (an error
row in ``ops list``, a line in the supervisor's heartbeat) while every other run reads normally
(docs/architecture.md#damaged-records).
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class DamagedRecord(ValueError):
    """``name`` (the object, ``runs/ID/state.json``) cannot be read as what it should be: ``why``."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


def load_object(name: str, data: bytes) -> dict[str, Any]:
    """The JSON object stored as ``name``, or ``DamagedRecord`` saying why it is not one."""
    if not data.strip():
        raise DamagedRecord(name, f"empty ({len(data)} bytes)")
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as e:
        raise DamagedRecord(name, f"not UTF-8 text (bad byte at {e.start})") from None
    except json.JSONDecodeError as e:
        if e.doc.strip() and (e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")):
            # The text ended inside the document: what a cut-off upload or a full disk leaves.
            raise DamagedRecord(name, f"not JSON (truncated at byte {len(data)})") from None
        raise DamagedRecord(name, f"not JSON ({e.msg} at byte {e.pos})") from None
    if not isinstance(doc, dict):
        raise DamagedRecord(name, f"a JSON {_kind(doc)}, not an object")
    return doc


def build(name: str, doc: dict[str, Any], make: Callable[[dict[str, Any]], T]) -> T:
    """``make(doc)`` (a document's ``from_dict``), its complaints turned into ``DamagedRecord``."""
    try:
        return make(doc)
    except DamagedRecord:
        raise
    except (KeyError, TypeError, ValueError) as e:
        why = f"no {e.args[0]!r} field" if isinstance(e, KeyError) else str(e)
        raise DamagedRecord(name, why) from None


def parse(name: str, data: bytes, make: Callable[[dict[str, Any]], T]) -> T:
    """The document stored as ``name``: ``load_object`` then ``build``."""
    return build(name, load_object(name, data), make)


def check_fields(doc: dict[str, Any], types: dict[str, tuple[type, ...]]) -> None:
    """``ValueError`` naming the first field of ``doc`` whose value is not of its ``types``
    (``type(None)`` among them where the field may be null; absent fields are not checked).

    Why: a document with a wrong-typed field (``{"state": "RUNNING", "attempt": "2"}``) loads
    fine and then fails far away, in arithmetic or a format string of some caller; checked at
    the read, the error names the object and the field."""
    for key, allowed in types.items():
        if key in doc and not _is(doc[key], allowed):
            want = " or ".join("null" if t is type(None) else _TYPE_NAMES.get(t, t.__name__) for t in allowed)
            raise ValueError(f"field {key!r} is {_kind(doc[key])} {_short(doc[key])}, not {want}")


_TYPE_NAMES = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object",
               bool: "true/false"}


def _is(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in allowed:
        return False  # true is an int to Python, not a count to us
    return isinstance(value, allowed)


def _kind(v: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."

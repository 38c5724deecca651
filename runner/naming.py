"""Run ids and the cloud names derived from them.

A run id is chosen by the user and is kept verbatim in the store (``runs/<ID>/``), so it may be
almost anything readable. GCE resource names and label values are far stricter, so they are
derived here, in one place, with one guarantee: two different run ids never map to the same name
(up to a 32-bit hash collision).

How that is kept: a name is the sanitized id, readable as is when sanitizing changed nothing.
When it changed something (case, characters outside ``[a-z0-9-]``, repeated or edge hyphens),
when the id ends like an attempt suffix (``-a2``), or when the name had to be truncated, ``--``
and 8 hex digits of sha256 of the original id are appended. A sanitized id never contains
``--`` (repeats are collapsed), so a hashed name can never equal an unhashed one, and two
hashed names are equal only if their hashes are.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import unicodedata

MAX_RUN_ID_LENGTH = 128
# The id is one directory name in the store and under `ops pull --dest`: filesystems refuse
# names over 255 bytes (NAME_MAX), and an id of 128 emoji is 512. Leave room for suffixes.
MAX_RUN_ID_BYTES = 200
GCE_NAME_MAX = 63
LABEL_VALUE_MAX = 63
HASH_LENGTH = 8

GCE_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")

# An unhashed id ending like an attempt suffix would make "demo-a2" and attempt 2 of "demo" clash.
_ATTEMPT_TAIL = re.compile(r"-a[0-9]+$")

_ALLOWED = "letters (any script), digits, spaces inside the id, '_', '-', '.'"

# Unicode categories that are invisible or not text at all: format characters (U+202E, which
# reverses what a terminal shows; U+200B, zero width; U+FEFF), surrogates, private use,
# unassigned, and line/paragraph separators. Two ids that look identical must not be two runs.
_REFUSED_CATEGORIES = {
    "Cc": "the control character",
    "Cf": "the invisible formatting character",
    "Cs": "the surrogate",
    "Co": "the private-use character",
    "Cn": "the unassigned code point",
    "Zl": "the line separator",
    "Zp": "the paragraph separator",
}


class InvalidRunId(ValueError):
    """A run id that cannot be used as a directory name in the store."""


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` unchanged if it is usable, else raise :class:`InvalidRunId`.

    The id becomes one path segment in the store (``runs/<ID>/``) and appears in logs and
    labels, so only what breaks those is refused: path separators, ``.``/``..``, control and
    invisible characters (they corrupt logs and terminals, or make two ids look the same),
    blank ids, spaces at either end (invisible in a listing), and ids too long to show or to
    be a file name (characters and UTF-8 bytes).
    """
    if not isinstance(run_id, str):
        raise TypeError(f"run id must be a string, not {type(run_id).__name__}")
    problem = _run_id_problem(run_id)
    if problem:
        raise InvalidRunId(f"invalid run id {_shorten(run_id)}: {problem}; allowed: {_ALLOWED}")
    return run_id


def _run_id_problem(run_id: str) -> str | None:
    """What is wrong with ``run_id``, or None; the first problem found wins."""
    if not run_id:
        return "it is empty"
    if len(run_id) > MAX_RUN_ID_LENGTH:
        return f"it is {len(run_id)} characters long, the limit is {MAX_RUN_ID_LENGTH}"
    size = len(run_id.encode("utf-8", "surrogatepass"))
    if size > MAX_RUN_ID_BYTES:
        return (f"it is {size} bytes in UTF-8, the limit is {MAX_RUN_ID_BYTES} (a directory "
                "name must fit the filesystem): use a shorter id")
    if "/" in run_id:
        return "it contains '/', which would make it a nested path in the store"
    for c in run_id:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(c))
        if what is not None:
            return f"it contains {what} U+{ord(c):04X} ({unicodedata.name(c, 'unnamed')})"
    if run_id.isspace():
        return "it is only whitespace"
    if run_id != run_id.strip():
        return "it starts or ends with whitespace"
    if run_id in (".", ".."):
        return f"{run_id!r} is a special path name"
    return None


def _shorten(run_id: str, limit: int = 40) -> str:
    """``repr`` of the id, cut short so an error message stays one readable line."""
    if len(run_id) <= limit:
        return repr(run_id)
    return repr(run_id[:limit]) + f"... ({len(run_id)} chars)"


def id_hash(run_id: str) -> str:
    """8 hex digits of sha256 of the original id: stable across processes and versions."""
    data = run_id.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:HASH_LENGTH]


def _sanitize(run_id: str, allowed: str) -> str:
    """Lowercase ASCII form of the id: accents dropped, other characters to '-', no edge '-'.

    ``allowed`` is a regex character class body of what may stay (besides '-').
    """
    ascii_form = unicodedata.normalize("NFKD", run_id).encode("ascii", "ignore").decode()
    lowered = ascii_form.lower()
    dashed = re.sub(f"[^{allowed}-]", "-", lowered)
    return re.sub("-+", "-", dashed).strip("-")


def _with_hash(body: str, run_id: str, room: int) -> str:
    """``body--HASH``, with body cut so the whole fits in ``room`` characters."""
    keep = max(0, room - 2 - HASH_LENGTH)
    body = body[:keep].rstrip("-")
    return f"{body}--{id_hash(run_id)}"


def resource_name(run_id: str, attempt: int | None = None, prefix: str = "runner", rank: int | None = None) -> str:
    """A GCE-valid resource name (VM, container) for a run and optionally one attempt.

    ``runner-demo-1-a2`` for ``demo-1``/attempt 2; ids that sanitizing changes or that are too
    long get a hash, e.g. ``runner-my-run--1b2c3d4e-a2`` for ``My Run``. The attempt suffix is
    never truncated away, so attempts of one run always get distinct names.

    ``rank`` (a gang's node, with an attempt): ``runner-demo-1-a2-n1`` for node 1. It cannot equal
    a single instance's name (those end in ``-aN``) nor another run's node (an unhashed id never
    ends like an attempt suffix, so the ``-aN-nR`` tail strips off back to a unique stem).
    """
    validate_run_id(run_id)
    _check_prefix(prefix)
    suffix = "" if attempt is None else f"-a{_check_attempt(attempt)}"
    if rank is not None:
        if attempt is None or isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"a node name needs an attempt and a rank >= 0, not attempt={attempt!r} rank={rank!r}")
        suffix += f"-n{rank}"
    room = GCE_NAME_MAX - len(prefix) - len(suffix)
    if room < 2 + HASH_LENGTH:
        raise ValueError(
            f"prefix {prefix!r} with attempt suffix {suffix!r} leaves no room for the run id "
            f"in a {GCE_NAME_MAX}-character name; use a shorter prefix"
        )
    body = _sanitize(run_id, "a-z0-9")
    if body == run_id and not _ATTEMPT_TAIL.search(body) and len(body) + 1 <= room:
        return f"{prefix}-{body}{suffix}"
    tail = _with_hash(body, run_id, room - 1)
    # An empty body leaves "--HASH"; join it to the prefix directly ("runner--HASH").
    stem = prefix + tail if tail.startswith("--") else f"{prefix}-{tail}"
    return stem + suffix


_NODE_TAIL = re.compile(r"-a[0-9]+-n([0-9]+)$")


def node_name(run_id: str, attempt: int, rank: int) -> str:
    """The name of node ``rank`` of a gang's attempt (``resource_name`` with a rank)."""
    return resource_name(run_id, attempt, rank=rank)


def instance_names(run_id: str, attempt: int, nodes: int = 1) -> list[str]:
    """The names of an attempt's instances in rank order: one (``resource_name``), or a gang's."""
    if nodes <= 1:
        return [resource_name(run_id, attempt)]
    return [node_name(run_id, attempt, rank) for rank in range(nodes)]


def rank_of(name: str) -> int | None:
    """The rank a gang node's name carries (``node_name``), or None for a single instance's name.

    Why from the name: GCE's bulkInsert gives every VM of one request the same metadata and
    labels, so a node can tell its rank only from its own name."""
    m = _NODE_TAIL.search(name)
    return int(m.group(1)) if m else None


def label_value(run_id: str) -> str:
    """A GCE label value (``[a-z0-9_-]{0,63}``) naming the run, e.g. to list its VMs.

    Same scheme as :func:`resource_name`: readable when the id already fits, hashed otherwise.
    GCE would also accept international lowercase letters; we keep to ASCII so the value is
    also a valid Docker label and survives any tool in between.
    """
    validate_run_id(run_id)
    body = _sanitize(run_id, "a-z0-9_")
    if body == run_id and len(body) <= LABEL_VALUE_MAX:
        return body
    return _with_hash(body, run_id, LABEL_VALUE_MAX)


def _check_prefix(prefix: str) -> None:
    """A prefix must itself start a valid GCE name, or every name built on it is invalid."""
    if not GCE_NAME_RE.fullmatch(prefix):
        raise ValueError(
            f"invalid name prefix {prefix!r}: it must start with a lowercase letter and contain "
            "only lowercase letters, digits and '-', not ending in '-'"
        )


def _check_attempt(attempt: int) -> int:
    """Attempts are counted from 0; anything else is a caller bug worth failing loudly on."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
    return attempt


def region_of(zone: str) -> str:
    """``us-central1-a`` → ``us-central1``: a GCE zone's name is its region's plus ``-LETTER``."""
    return zone.rsplit("-", 1)[0]


def store_label(store_url: str) -> str:
    """A label value naming the store a run lives in: ``s`` and 16 hex digits of its URL's sha256.

    Why: run ids are unique within one store only. Two stores (two buckets in one project, two
    directories on one Docker host) may both have a run ``exp-1``; every instance carries this
    label and each backend keeps only its own store's, so ``ops delete`` in one store can never
    stop the other's job. The URL is normalised first (trailing ``/``; a ``file://`` path made
    absolute and resolved), so two spellings of one store get one label.
    """
    url = store_url.rstrip("/")
    if url.startswith("file://"):
        import os

        url = "file://" + os.path.realpath(url[len("file://"):] or "/")
    return "s" + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def default_actor() -> str:
    """Who a supervisor process says it is, in the journal and the heartbeat: host and pid, so two
    supervisors over one store can be told apart."""
    return f"supervisor@{socket.gethostname()}.{os.getpid()}"

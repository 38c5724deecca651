"""The local backend's side of the checkpoint mirror (entrypoint.mirror): a ``file://`` mirror is
bind-mounted into the container like the store, and the agent told where (``RUNNER_MIRROR``),
since the path in the spec is the host's. A ``gs://`` mirror cannot be reached from a local
container (they have no network), so it is refused with what to do instead.
"""

from __future__ import annotations

from entrypoint.record import RunSpec
from runner.launch.backends.base import BackendError

MIRROR_MOUNT = "/var/lib/runner/mirror"


def mirror_dir(url: str) -> str:
    """The host directory of a local run's mirror; ``BackendError`` (with the fix) for one a
    local container cannot reach. Checked at submit (``LocalBackend.spec_options``) and again
    for every container."""
    if not url.startswith("file://"):
        raise BackendError(
            f"the local backend needs a local directory mirror (file:///DIR or a path), not {url}: its "
            "containers have no network. Use --backend gce for a gs:// mirror.")
    path = url[len("file://"):]
    if ":" in path:
        raise BackendError(f"the mirror path {path} contains ':', which Docker cannot bind-mount; use another directory")
    return path


def mirror_mount(spec: RunSpec) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(volumes, environment) to add to a run's container for its mirror; empty without one."""
    if not spec.mirror:
        return {}, {}
    return {mirror_dir(spec.mirror): {"bind": MIRROR_MOUNT, "mode": "rw"}}, {"RUNNER_MIRROR": "file://" + MIRROR_MOUNT}

"""How a gang node's startup script learns its place: gcp/startup.sh's own functions, run in bash.

One bulkInsert gives every VM of a gang the same metadata (the size, ``runner-nnodes``), so the
script reads its rank from its own name (``instance/name`` from the metadata server), as
``runner.naming.rank_of`` does, and hands rank and size to the container. It does not compute the
master address: the agent reads rank 0's from the attempt's create claim.

No Docker: the script's functions are loaded without its ``main`` and ``docker`` is a bash
function that records the ``docker run`` argv (tests/test_startup_script.py boots the whole
script on the real Docker). The metadata server is the strict stand-in of tests/standins/cos_sim.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.launch.backends.vm_metadata import VmMetadata
from runner.naming import node_name, rank_of, resource_name
from tests.standins.cos_sim.fakes import FakeMetadata

STARTUP = Path(__file__).resolve().parent.parent / "gcp" / "startup.sh"
IMAGE = "us-docker.pkg.dev/p/r/img@sha256:" + "a" * 64

# Stand-ins for what needs a VM: the job's container (recorded, reported running), the store
# writes (none here) and the failure path (which would delete or power off the machine).
HARNESS = r"""
docker() {
  case $1 in
    container) [[ $2 == inspect && $3 == -f ]] && { echo running; return 0; }; return 1 ;;
    run) printf '%s\n' "$@" >"$WORK/docker-run.argv"; echo container-id ;;
    *) return 0 ;;
  esac
}
write_startup_record() { :; }
mark() { :; }
fail() { printf 'FAILED %s: %s\n' "$1" "$2"; exit 3; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"""


def script_without_main() -> str:
    text = STARTUP.read_text()
    body, last = text.rstrip("\n").rsplit("\n", 1)
    assert last == 'main "$@"', "startup.sh no longer ends by calling main: update this test"
    return body


def boot_to_container(instance: str, attributes: dict[str, str], tmp_path: Path) -> tuple[int, str, list[str]]:
    """Read the metadata and start the container as the script does; (exit code, output, docker
    run argv)."""
    script = tmp_path / "boot.sh"
    script.write_text(script_without_main() + "\n" + HARNESS
                      + 'read_metadata\nstart_container\ncat "$WORK/docker-run.argv"\n')
    with FakeMetadata(attributes=attributes, instance=instance, zone="us-central1-a", project="p",
                      token="tok") as md:
        p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "METADATA_URL": md.url,
                                "RUNNER_STATE_DIR": str(tmp_path / "state")})
    argv = p.stdout.split("\n")
    return p.returncode, p.stdout + p.stderr, argv


def env_of(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-e" and "=" in argv[i + 1])


def metadata(nnodes: int) -> dict[str, str]:
    return VmMetadata(run_id="big-1", attempt=3, store="gs://bucket/runs", image=IMAGE, nnodes=nnodes).items()


def test_a_gang_node_passes_the_rank_its_name_carries_and_the_gangs_size_to_the_job(tmp_path):
    name = node_name("big-1", 3, 1)

    rc, out, argv = boot_to_container(name, metadata(2), tmp_path)

    assert rc == 0, out
    env = env_of(argv)
    assert (env["RUNNER_NODE_RANK"], env["RUNNER_NNODES"], env["RUNNER_INSTANCE"]) == ("1", "2", name)
    assert "RUNNER_MASTER_ADDR" not in env and "MASTER_ADDR" not in env  # the agent's to find
    assert argv[argv.index("--network") + 1] == "host"  # torchrun's port on rank 0 is the VM's own
    assert "gang node 1 of 2" in out


def test_a_single_vm_passes_no_gang_environment(tmp_path):
    rc, out, argv = boot_to_container(resource_name("big-1", 3), metadata(1), tmp_path)

    assert rc == 0, out
    env = env_of(argv)
    assert "RUNNER_NODE_RANK" not in env and "RUNNER_NNODES" not in env
    assert env["RUNNER_INSTANCE"] == resource_name("big-1", 3)


def test_a_gang_vm_whose_name_carries_no_rank_fails_its_boot(tmp_path):
    rc, out, _ = boot_to_container(resource_name("big-1", 3), metadata(2), tmp_path)

    assert rc == 3 and "FAILED bad_metadata" in out and "carries no node rank" in out


@pytest.mark.parametrize("name", [
    node_name("big-1", 3, 0), node_name("big-1", 3, 12), node_name("My Run", 1, 2),
    node_name("x-a1-n0", 2, 1), resource_name("big-1", 3), resource_name("x-a1-n0", 2), "runner-big-1-a3-n007",
])
def test_the_script_reads_a_rank_from_a_name_exactly_as_the_runner_does(name, tmp_path):
    script = tmp_path / "rank.sh"
    script.write_text(script_without_main() + '\nnode_rank "$1" || echo none\n')

    p = subprocess.run(["bash", str(script), name], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})

    assert p.returncode == 0, p.stderr
    expected = rank_of(name)
    assert p.stdout.strip() == ("none" if expected is None else str(expected))


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_writes_the_attempts_startup_record_and_timeline(rank, tmp_path):
    """The supervisor judges rank 0's boot (attempts/N/startup.json) and the recovery timeline is
    rank 0's: another node's record goes under its own name, and it marks no phases."""
    script = tmp_path / "names.sh"
    script.write_text(script_without_main() + "\n" + r"""
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
read_metadata
record_name; echo
get_token() { echo "MARKED"; return 1; }  # mark() asks for a token first: seen only if it marks
mark vm_running 1.0 '{}'
""")
    with FakeMetadata(attributes=metadata(2), instance=node_name("big-1", 3, rank), zone="us-central1-a",
                      project="p", token="tok") as md:
        p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "METADATA_URL": md.url,
                                "RUNNER_STATE_DIR": str(tmp_path / "state")})
    assert p.returncode == 0, p.stderr
    names = [ln for ln in p.stdout.splitlines() if ln.endswith("startup.json")]
    suffix = "attempts/3/startup.json" if rank == 0 else "attempts/3/nodes/1/startup.json"
    assert names == ["runs/runs/big-1/" + suffix], p.stdout  # the store's prefix "runs", then the record
    assert ("MARKED" in p.stdout) == (rank == 0), p.stdout

"""`runner doctor`'s gang check: the VPC firewall lets a gang's VMs reach each other over TCP.

Why: a gang's nodes meet at rank 0's address on torchrun's port (29500, the container runs on the
VM's own network), and their collectives then connect directly to each other on ports nobody
chooses ("Each NCCL ranks connects to the process which called ncclGetUniqueId. Then they also
connect directly to each other ... Specifying the client port ... is not [possible] at the
moment", https://github.com/NVIDIA/nccl/issues/388). The ``default`` network allows all internal
traffic (``default-allow-internal``: tcp 0-65535 from 10.128.0.0/9), but "No manually created
network has automatically created firewall rules except for a default "allow" rule for outgoing
traffic and a default "deny" for incoming traffic"
(https://www.pulumi.com/docs/reference/pkg/gcp/compute/firewall/): a gang on a network the user
made starts, and then hangs at its rendezvous until the stall watchdog restarts it, again and again.

What it reads: ``firewalls.list`` of the network's project, and evaluates the VPC rules as GCE
does for traffic from each subnetwork the gang may use to a VM of the run (no network tags):
ingress rules that are enabled, match the protocol and port and whose source ranges contain the
subnetwork; the lowest priority number wins, a DENY beats an ALLOW of the same priority, and with
no rule matching the implied deny-ingress applies (Firewall.priority, e.g.
https://pub.dev/documentation/pulumi_google_native/latest/compute/Firewall/priority.html).
Rules with target tags or service accounts, or sources given by tags, are not counted (a runner
VM has no tags); hierarchical and network firewall policies are not read, and the report says so.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Iterable

from runner.cloud.doctor_network import _NetworkView
from runner.launch.backends.gang import DEFAULT_MASTER_PORT

if TYPE_CHECKING:
    from runner.cloud.doctor import Check, _Doctor

NAME = "gang network"
RULE_NAME = "cos-spot-runner-gang"
# What a gang needs open between its VMs: the rendezvous port and the ports collectives pick
# (unprivileged; a listening socket bound to port 0 gets one of the ephemeral ones), merged.
NEEDED = ((DEFAULT_MASTER_PORT, DEFAULT_MASTER_PORT), (1024, 65535))


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
DENIED_BY = "denied by rule "
NOT_READ = "hierarchical and network firewall policies were not read"


def gang_network_check(d: "_Doctor") -> "Check":
    """✓ when every subnetwork the gang may run in can reach the others on every TCP port a gang
    uses; ✗ with the ``gcloud compute firewall-rules create`` that opens them; skipped for a run
    of one VM."""
    from runner.cloud.doctor import Check, _skip

    cfg = d.cfg
    if cfg.backend != "gce":
        return _skip(NAME, "only GCE gangs cross a VPC network")
    if cfg.nodes <= 1:
        return _skip(NAME, "nodes = 1: one VM per attempt, no traffic between VMs")
    if not cfg.project or not cfg.zones:
        return _skip(NAME, "no project or zones configured")
    view = _NetworkView(d)
    net_project, net_name = view.network_ref()
    network = view.network(net_project, net_name)
    ranges = [sub.ip_cidr_range for sub, _ in (view.subnetwork(r, network) for r in view.regions)
              if sub is not None] if network is not None else []
    if not ranges:
        return _skip(NAME, f"no subnetwork of network {net_name} to check (the network check says what to make)")
    rules = [f for f in _firewalls(d, net_project) if _last(f.network) == net_name]
    problems, deny_priorities = [], []
    for source in ranges:
        closed = closed_tcp(rules, source)
        for lo, hi, by in closed:
            where = f"tcp:{lo}" if lo == hi else f"tcp:{lo}-{hi}"
            problems.append(f"{where} from {source} is closed ({by})")
            deny_priorities += [int(f.priority) for f in rules if by == DENIED_BY + f.name]
    if not problems:
        return Check(NAME, True, f"tcp between the gang's VMs is open on network {net_name} "
                                 f"({', '.join(ranges)}); {NOT_READ}")
    priority = f" --priority {min(deny_priorities) - 1}" if deny_priorities and min(deny_priorities) > 0 else ""
    fix = (f"gcloud compute firewall-rules create {RULE_NAME} --project {net_project} --network {net_name} "
           f"--direction INGRESS --action ALLOW --rules tcp --source-ranges {','.join(ranges)}{priority}")
    return Check(NAME, False, f"the VMs of a gang ({cfg.nodes} nodes) must reach each other on torchrun's port "
                              f"{DEFAULT_MASTER_PORT} and the ports their collectives open, but on network "
                              f"{net_name} " + "; ".join(problems) + f" ({NOT_READ})", fix)


def closed_tcp(rules: Iterable[Any], source: str) -> list[tuple[int, int, str]]:
    """The needed TCP port ranges that ``rules`` close to traffic from ``source`` (a CIDR), each
    with what closes it (a DENY rule's name, or the implied deny-ingress)."""
    applying = [f for f in rules if _applies(f, source)]
    cuts = {0, 65536}
    for f in applying:
        for lo, hi in _tcp_ports(f):
            cuts |= {lo, hi + 1}
    bounds = sorted(cuts)
    closed: list[tuple[int, int, str]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        hi = nxt - 1
        needed = [(max(lo, a), min(hi, b)) for a, b in _merged(NEEDED) if max(lo, a) <= min(hi, b)]
        if not needed:
            continue
        deciding = _deciding(applying, lo)
        if deciding is not None and list(deciding.allowed):
            continue
        by = DENIED_BY + deciding.name if deciding is not None else "no rule allows it: the implied deny-ingress"
        for a, b in needed:
            if closed and closed[-1][2] == by and closed[-1][1] + 1 == a:
                closed[-1] = (closed[-1][0], b, by)
            else:
                closed.append((a, b, by))
    return closed


# ---- internals -----------------------------------------------------------------------------------

def _firewalls(d: "_Doctor", project: str) -> list[Any]:
    from google.cloud import compute_v1

    from runner.cloud.gcp_clients import _client_kwargs

    client = compute_v1.FirewallsClient(**_client_kwargs(d.cfg.compute_endpoint))
    return list(client.list(project=project))


def _applies(rule: Any, source: str) -> bool:
    """An enabled ingress rule for every VM of the network whose source ranges hold ``source``."""
    if rule.disabled or (rule.direction or "INGRESS") != "INGRESS":
        return False
    if list(rule.target_tags) or list(rule.target_service_accounts):
        return False  # a runner VM has no tags; its service account is not matched here
    src = ipaddress.ip_network(source, strict=False)
    for r in rule.source_ranges:
        try:
            net = ipaddress.ip_network(r, strict=False)
        except ValueError:
            continue
        if net.version == src.version and src.subnet_of(net):  # type: ignore[arg-type]
            return True
    return False


def _tcp_ports(rule: Any) -> list[tuple[int, int]]:
    """The TCP port ranges a rule's allowed/denied entries name (no ports: all of them)."""
    out: list[tuple[int, int]] = []
    for entry in list(rule.allowed) + list(rule.denied):
        if entry.I_p_protocol.lower() not in ("tcp", "all", "6"):
            continue
        if not entry.ports:
            out.append((0, 65535))
        for p in entry.ports:
            lo, _, hi = p.partition("-")
            out.append((int(lo), int(hi or lo)))
    return out


def _deciding(rules: list[Any], port: int) -> Any:
    """The rule that decides TCP ``port``: lowest priority number, DENY first on a tie."""
    matching = [f for f in rules if any(lo <= port <= hi for lo, hi in _tcp_ports(f))]
    matching.sort(key=lambda f: (int(f.priority), 0 if list(f.denied) else 1))
    return matching[0] if matching else None


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]

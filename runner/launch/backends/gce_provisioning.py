"""Which GCE provisioning model an attempt's VM asks for, and the ``scheduling`` that says so.

A run pins one *mode* in ``spec.vm["provisioning"]``:

- ``spot`` (the default, what every run did before): ``provisioningModel: SPOT``.
- ``standard``: on-demand, ``provisioningModel: STANDARD`` ("Standard provisioning with user
  controlled runtime, no discounts", the enum's reference:
  https://cloud.google.com/python/docs/reference/compute/latest/google.cloud.compute_v1.types.Scheduling.ProvisioningModel).
  No ``instanceTerminationAction`` ("the action GCE should take when SPOT VM is preempted",
  https://pub.dev/documentation/pulumi_gcp/latest/compute/InstanceFromTemplateScheduling/instanceTerminationAction.html)
  unless ``maxRunDuration`` is set, which needs one.
- ``spot-then-standard``: spot, until the attempt has been unable to get a VM for
  ``spec.vm["fallback_after_s"]`` (counted from its first failed create, which the supervisor
  keeps in the run's create backoff: runner.launch.create_backoff), then standard.
- ``flex-start``: ``provisioningModel: FLEX_START`` ("Instance is provisioned using the Flex
  Start provisioning model and has a limited runtime",
  https://docs.cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.Scheduling.Types.ProvisioningModel).
  Flex-start VMs "run for up to seven days" and are offered for "all accelerator-optimized
  machine types (except A4X and G4) and H4D machine types"
  (https://cloud.google.com/compute/docs/instances/about-flex-start-vms), so a run must give a
  ``max_run_duration`` of at most 7 days and one of those machine types; both are refused at
  submit (``flex_start_refusal``).

Its own module: the choice is the one place that reads the fallback clock, and both the plan
(gce.py) and submit's checks use the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.launch.backends.gce_shapes import family

SPOT, STANDARD, FLEX_START = "SPOT", "STANDARD", "FLEX_START"  # GCE's provisioningModel values
MODES = ("spot", "standard", "spot-then-standard", "flex-start")
DEFAULT_MODE = "spot"
DEFAULT_FALLBACK_AFTER_S = 1800.0
_FIXED = {"spot": SPOT, "standard": STANDARD, "flex-start": FLEX_START}

FLEX_START_MAX_RUN_S = 7 * 86400  # "run for up to seven days" (about-flex-start-vms)
# "all accelerator-optimized machine types (except A4X and G4) and H4D machine types": the
# accelerator-optimized families are A4X, A4, A3, A2, G4 and G2.
FLEX_START_FAMILIES = ("a4", "a3", "a2", "g2", "h4d")
FLEX_START_DOC = "https://cloud.google.com/compute/docs/instances/about-flex-start-vms"


@dataclass(frozen=True)
class ProvisioningChoice:
    """The model one create asks for, and why (for the run's journal)."""

    model: str
    why: str


def choose(vm: dict[str, Any], failing_since: float | None, now: float) -> ProvisioningChoice:
    """The model of the next create. ``failing_since``: when this attempt's creates began to
    fail (None: the last one did not). The fallback looks only at the current attempt, so a
    restart after a preemption tries spot again."""
    mode = vm.get("provisioning") or DEFAULT_MODE
    if mode in _FIXED:
        return ProvisioningChoice(_FIXED[mode], f"provisioning = {mode}")
    after = float(vm.get("fallback_after_s") or DEFAULT_FALLBACK_AFTER_S)
    if failing_since is None:
        return ProvisioningChoice(SPOT, "spot-then-standard: spot first")
    waited = max(0.0, now - failing_since)
    if waited >= after:
        return ProvisioningChoice(STANDARD, f"spot-then-standard: no VM for {_dur(waited)} "
                                            f"(fallback_after {_dur(after)}): standard (on-demand)")
    return ProvisioningChoice(SPOT, f"spot-then-standard: no VM for {_dur(waited)}, standard after "
                                    f"{_dur(after)}")


def scheduling(model: str, vm: dict[str, Any]) -> Any:
    """The ``compute_v1.Scheduling`` of a VM on ``model``. Every model keeps
    ``onHostMaintenance: TERMINATE`` (a GPU VM cannot live-migrate) and no automatic restart
    (the supervisor, not GCE, decides what follows a VM's end)."""
    from google.cloud import compute_v1

    s = compute_v1.Scheduling(provisioning_model=model, on_host_maintenance="TERMINATE",
                              automatic_restart=False)
    mrd = vm.get("max_run_duration_s")
    if model == SPOT:
        s.instance_termination_action = vm.get("termination_action") or "DELETE"
    elif model == FLEX_START:
        # A flex-start VM ends at its maxRunDuration; DELETE leaves nothing behind, and the
        # supervisor restarts the run as after a preemption.
        s.instance_termination_action = "DELETE"
    elif mrd:
        s.instance_termination_action = "DELETE"  # GCE wants one whenever maxRunDuration is set
    if mrd:
        s.max_run_duration = compute_v1.Duration(seconds=int(mrd))
    return s


def flex_start_refusal(machine_type: str, max_run_duration_s: float | None) -> str | None:
    """Why a flex-start run of this shape cannot be created (None: it can), with the fix."""
    fam = family(machine_type)
    if fam not in FLEX_START_FAMILIES:
        return (f"--provisioning flex-start needs an accelerator-optimized (A4, A3, A2, G2) or H4D "
                f"machine type; {machine_type} is not one ({FLEX_START_DOC}): pass e.g. "
                "--machine-type g2-standard-8, or use --provisioning spot")
    if not max_run_duration_s:
        return ("--provisioning flex-start needs --max-run-duration (flex-start VMs run for at most "
                f"7 days, {FLEX_START_DOC}): pass e.g. --max-run-duration 4h")
    if float(max_run_duration_s) > FLEX_START_MAX_RUN_S:
        return (f"--max-run-duration {_dur(float(max_run_duration_s))} is longer than flex-start VMs run "
                f"(at most 7 days, {FLEX_START_DOC}): pass 7d or less")
    return None


def price_kind(model: str) -> str:
    """The price table's prefix for ``model`` ("" = the spot prices it has always held)."""
    return {STANDARD: "standard_", FLEX_START: "flex_start_"}.get(model, "")


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600 and s % 3600 == 0:
        return f"{s // 3600}h"
    if s >= 60:
        return f"{s // 60}m" + (f"{s % 60}s" if s % 60 else "")
    return f"{s}s"

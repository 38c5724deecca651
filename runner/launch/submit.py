"""Submitting a run: write its spec and first state, or decide what a re-submit means.

Re-submitting an existing run id resumes it (same record, next attempt, restored from
``last.pt``); a finished or stopped run is only started again with ``restart=True``, and a
re-submit with another command than the recorded one is refused, live or not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from entrypoint.record import ABANDONED_SPEC_AFTER, RunRecord, RunSpec, State, StopInProgress
from entrypoint.store import PreconditionFailed
from runner.launch import staged_data
from runner.launch.backends import backend_type
from runner.launch.backends.base import BackendError
from runner.config import Config
from runner.launch.context import Context


class SubmitRefused(Exception):
    """The run exists in a state that a plain submit must not touch; the message says why."""


@dataclass
class SubmitResult:
    run_id: str
    spec: RunSpec
    resumed: bool
    message: str
    joined: bool = False  # another submit of this new id created it a moment before this one


def resolve_image(ctx: Context, image: str | None) -> str:
    """Pin the image: restarts must run exactly what the first attempt ran
    (docs/architecture.md#runs-and-restarts)."""
    image = image or ctx.cfg.image
    if not image:
        raise BackendError("no image given: pass --image NAME (build it with `make image`) or set image in runner.toml")
    return ctx.backend.pin_image(image)


def build_spec(cfg: Config, run_id: str, command: list[str], image: str, *,
               max_restarts: int | None, retry_on_failure: int | None, env: dict[str, str],
               priority: int = 0, sweep: str | None = None, max_concurrent: int | None = None) -> RunSpec:
    """The spec of a new run: everything that shapes its attempts, pinned now (so whichever
    supervisor restarts it, with whatever config, recreates the same attempt). ``priority``,
    ``sweep`` and ``max_concurrent`` are the queue's settings (a sweep's members share them)."""
    kind = backend_type(cfg.backend)
    kind.check_nodes(cfg.nodes)
    machine_type, gpu = kind.spec_shape(cfg)
    settings = cfg.attempt_settings()
    data, data_vm = staged_data.spec_fields(cfg, run_id, cfg.store_url)  # --data, pinned for every attempt
    return RunSpec(
        run_id=run_id,
        image=image,
        command=command,
        backend=cfg.backend,
        max_restarts=cfg.max_restarts if max_restarts is None else max_restarts,
        retry_on_failure=cfg.retry_on_failure if retry_on_failure is None else retry_on_failure,
        checkpoint_dir=cfg.checkpoint_dir,
        results_dir=cfg.results_dir,
        env=env,
        machine_type=machine_type,
        gpu=gpu,
        zones=list(cfg.zones),
        nodes=cfg.nodes,
        priority=priority,
        sweep=sweep,
        max_concurrent=max_concurrent,
        settings=asdict(settings),
        # What older runners read (they ignore ``settings``): a run submitted with this version
        # and restarted by an older hosted supervisor still gets its own GPU wait.
        timeouts={"gpu_timeout": settings.gpu_timeout, "stall_window": settings.stall_window,
                  "grace_period": settings.grace_period},
        vm={**kind.spec_options(cfg), **data_vm},
        data=data,
        mirror=cfg.mirror,
    )


def submit(ctx: Context, run_id: str, command: list[str], *, image: str | None, restart: bool,
           max_restarts: int | None = None, retry_on_failure: int | None = None,
           env: dict[str, str] | None = None, actor: str = "submit", priority: int = 0) -> SubmitResult:
    rec = RunRecord(ctx.store, run_id)
    cur = rec.read_state()
    if cur is not None:
        st = cur[0]
        spec = rec.read_spec()
        if spec is None:
            raise SubmitRefused(f"run {run_id} has a state but no spec.json; the record is damaged")
        stopped = rec.stop_requested()
        if (st.state.terminal or stopped) and not restart:
            what = "was stopped" if stopped and not st.state.terminal else f"is {st.state.value}"
            raise SubmitRefused(
                f"run {run_id} {what} (attempt {st.attempt}): pass --restart to run it again "
                "from its last checkpoint, or choose another --run-id"
            )
        if command and command != spec.command and (st.state.terminal or stopped):
            # A restart resumes the recorded run; running another command under its id would
            # mix two jobs' checkpoints. Refuse rather than silently run the old command.
            raise SubmitRefused(
                f"run {run_id} was submitted with the command {_shell(spec.command)}; --restart runs "
                f"that command again, not {_shell(command)}: drop the command after --restart, "
                "or choose another --run-id for the new command"
            )
        if st.state.terminal or stopped:
            try:
                rec.reopen(actor, "restart requested by user")
            except StopInProgress as e:
                raise SubmitRefused(str(e)) from None
            return SubmitResult(run_id, spec, True, f"run {run_id} restarted from {st.state.value}")
        if command and command != spec.command:
            # A live run keeps its recorded command; resuming it while saying "kept" ran something
            # other than what was typed, and exited 0 (issue 20 §3). Refuse, with both commands.
            raise SubmitRefused(
                f"run {run_id} is live ({st.state.value}, attempt {st.attempt}) with the command "
                f"{_shell(spec.command)}, not {_shell(command)}; nothing was changed. To start the new "
                f"command, choose another id: runner submit --run-id NEW -- {_shell(command)}. To follow "
                f"this run, submit it without a command; to stop it: runner ops delete --run-id {run_id}"
            )
        return SubmitResult(run_id, spec, True, f"run {run_id} exists ({st.state.value}, attempt {st.attempt}): resuming it")
    if not command:
        raise SubmitRefused("no command given: runner submit --run-id ID -- CMD ARGS...")
    check_store_mountable(ctx.cfg.backend, ctx.store.url)  # before the image is looked up
    spec = new_run_spec(ctx, run_id, command, resolve_image(ctx, image),
                        max_restarts=max_restarts, retry_on_failure=retry_on_failure, env=env or {},
                        priority=priority)
    return create_run(ctx, spec, actor)


def new_run_spec(ctx: Context, run_id: str, command: list[str], pinned_image: str, **spec_options: object) -> RunSpec:
    """The spec of a new run, checked against the provider (``prepare``) before anything is
    written. ``pinned_image``: what ``resolve_image`` returned. A sweep makes this once and
    derives its members from it, so N runs cost one image pin and one set of provider checks."""
    check_store_mountable(ctx.cfg.backend, ctx.store.url)
    spec = build_spec(ctx.cfg, run_id, command, pinned_image, **spec_options)  # type: ignore[arg-type]
    return ctx.backend.prepare(spec)


def create_run(ctx: Context, spec: RunSpec, actor: str = "submit") -> SubmitResult:
    """Write a new run's spec and first state (create-only both): a submit that raced another
    for the id joins the same run or is refused (``_lost_race``)."""
    rec = RunRecord(ctx.store, spec.run_id)
    try:
        rec.write_spec(spec)
        rec.create_state(actor)
    except PreconditionFailed as e:
        return _lost_race(rec, spec, e)
    return SubmitResult(spec.run_id, spec, False, f"run {spec.run_id} submitted")


def _lost_race(rec: RunRecord, ours: RunSpec, lost: PreconditionFailed) -> SubmitResult:
    """Another submit of this new run id wrote its spec or state first (issue 17 §8).

    Both found no run when they looked. The same run (equal spec): it is live and this submit
    joins it, as a re-submit of a live run would, instead of telling the user to ``--restart``
    it. Another command or other settings: the id is taken, said with both commands.
    """
    run_id = rec.run_id
    theirs = rec.read_spec()
    created = rec.read_state() is not None
    differs = [] if theirs is None else _differences(theirs, ours)
    if theirs is not None and not differs and created:
        return SubmitResult(run_id, theirs, True, f"run {run_id} was just submitted by another submit",
                            joined=True)
    if theirs is None or not differs:  # its record changed again meanwhile (deleted?): say what was refused
        raise SubmitRefused(f"run {run_id} could not be submitted: {lost}; look at it with "
                            f"`runner ops status --run-id {run_id}`, then submit again") from None
    if "command" in differs:
        taken = (f"run id {run_id} is taken: another submit just submitted it with the command "
                 f"{_shell(theirs.command)}, not yours ({_shell(ours.command)}); yours was not submitted")
    else:
        taken = (f"run id {run_id} is taken: another submit just submitted the same command with other "
                 f"{', '.join(differs)}; yours was not submitted")
    if created:
        raise SubmitRefused(f"{taken}: choose another --run-id for it")
    # Its spec without a state: that submit is still writing, or died (``RunRecord.write_spec``).
    raise SubmitRefused(f"{taken}: choose another --run-id for it. If that submit died before it "
                        f"created the run, its spec.json stops holding the id after "
                        f"{ABANDONED_SPEC_AFTER:.0f}s")


def _differences(a: RunSpec, b: RunSpec) -> list[str]:
    """The spec fields in which two specs differ (when each was written does not count)."""
    da, db = asdict(a), asdict(b)
    return [k for k in da if k != "created_at" and da[k] != db.get(k)]


def check_store_mountable(backend: str, store_url: str) -> None:
    """Refuse a store the backend could never give to the run's instance (before any write)."""
    try:
        backend_type(backend).check_store(store_url)
    except BackendError as e:
        raise SubmitRefused(str(e)) from None


def _shell(command: list[str]) -> str:
    import shlex

    return shlex.join(command)


def dry_run(cfg: Config, run_id: str, command: list[str], image: str | None, *,
            env: dict[str, str] | None = None, **kw: object) -> tuple[object, list[str]]:
    """The exact request the first attempt would send, and what was not checked to make it.

    Writes, creates and contacts nothing: no store is opened and no API is called, so a dry run
    needs no credentials (what submit checks against the provider is listed instead).
    """
    from runner.launch.context import make_plan_backend
    from runner.launch.supervisor import launch_context

    check_store_mountable(cfg.backend, cfg.store_url)
    # The job's env is part of the request (local: `docker run -e`): a dry run that dropped it
    # printed a request other than the one submit sends.
    spec = build_spec(cfg, run_id, command, image or cfg.image or "IMAGE", env=dict(env or {}),
                      max_restarts=kw.get("max_restarts"), retry_on_failure=kw.get("retry_on_failure"))  # type: ignore[arg-type]
    plan = make_plan_backend(cfg).plan(spec, launch_context(spec, 1, cfg.store_url))
    return plan, ["the store was not opened", *backend_type(cfg.backend).unchecked_by_dry_run(spec)]


__all__ = ["SubmitRefused", "SubmitResult", "submit", "new_run_spec", "create_run", "dry_run", "State"]

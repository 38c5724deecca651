"""The in-container agent: wraps the job and keeps the run record true.

Order of a start: check ``.stop`` → restore checkpoints → write the attempt manifest → state
RUNNING → start the job with heartbeats, progress and background checkpoint sync → on exit or
SIGTERM, a final sync, the log upload and the final state.

Configuration comes from the environment (the startup script or the local backend sets it):

=========================  ==================================================================
RUNNER_RUN_ID              the run id (required)
RUNNER_STORE               ``gs://BUCKET[/PREFIX]`` or ``file:///DIR`` (required)
RUNNER_ATTEMPT             attempt number (required)
RUNNER_CHECKPOINT_DIR      local checkpoint directory, synced to ``runs/ID/checkpoints/``
RUNNER_RESULTS_DIR         local results directory, synced to ``runs/ID/results/`` at the end
RUNNER_HEARTBEAT_INTERVAL  seconds between heartbeats (default 5)
RUNNER_SYNC_INTERVAL       seconds between checkpoint sync passes (default 10)
RUNNER_GRACE_PERIOD        seconds from SIGTERM to the container being killed (default 25)
RUNNER_PRESTAGED_DIR       checkpoint files the VM fetched before the container started (same
                           names as under ``runs/ID/checkpoints/``): adopted when they are
                           exactly the stored objects (``entrypoint.prestaged``)
RUNNER_DATA_DIR            the staging root for the run's ``--data`` (``entrypoint.staging``),
                           each source also mounted read-only at its path by the backend
RUNNER_MIRROR              a second checkpoint store when the spec pins none (``entrypoint.mirror``)
RUNNER_INSTANCE, RUNNER_ZONE, RUNNER_IMAGE   recorded in the manifest
RUNNER_PROVISIONING        the VM's provisioning model (SPOT, STANDARD, FLEX_START): in the manifest
RUNNER_NODE_RANK,          a gang's node (``entrypoint.gang``): only rank 0 records the run's
RUNNER_NNODES              state and publishes checkpoints; the others write their own heartbeat
RUNNER_MASTER_ADDR         rank 0's address; unset: read from the attempt's create claim
=========================  ==================================================================

The job gets ``RUNNER_CHECKPOINT_DIR``, ``RUNNER_RESULTS_DIR``, ``RUNNER_PROGRESS_FILE`` and,
when a checkpoint was restored, ``RUNNER_RESUME_FROM`` (the checkpoint directory).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from entrypoint import gang
from entrypoint.checkpoints import (
    BackgroundSync, CommittingSync, DirectorySync, NoSpaceForRestore,
)
from entrypoint.mirror import MirrorSync, Stamper, mirror_url_for
from entrypoint.prestaged import PRESTAGED_ENV
from entrypoint.progress import ProgressTracker
from entrypoint.progress_pattern import ProgressPattern
from entrypoint.progress_series import ProgressSeries
from entrypoint.record import MOVES, OUTCOME_UNRECORDED, Heartbeat, IllegalTransition, Role, RunRecord, State
from entrypoint.record.phases import CHECKPOINT_RESTORED, DATA_STAGED, FIRST_STEP
from entrypoint.resume import resume
from entrypoint.shards import SHARDS_DIR
from entrypoint.staging import DataStagingError, StagingProgress, stage_run_data
from entrypoint.store import PreconditionFailed, Store, StoreError
from entrypoint.stores import open_store

log = logging.getLogger("entrypoint")
ACTOR = "agent"
# How long a gang node waits for rank 0's address to be recorded (GCE: read back after the
# bulkInsert, seconds after the create; the VMs boot for longer than that).
MASTER_ADDR_WAIT = 300.0


@dataclass(frozen=True)
class AgentConfig:
    run_id: str
    store_url: str
    attempt: int
    checkpoint_dir: str
    results_dir: str
    heartbeat_interval: float
    sync_interval: float
    grace_period: float
    instance: str
    zone: str
    image: str
    prestaged_dir: str | None = None
    node: gang.Node = gang.Node()
    provisioning: str = ""  # the VM's GCE provisioningModel (SPOT, STANDARD, FLEX_START); "" = unknown/local

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> "AgentConfig":
        missing = [k for k in ("RUNNER_RUN_ID", "RUNNER_STORE", "RUNNER_ATTEMPT") if not env.get(k)]
        if missing:
            raise SystemExit(
                f"entrypoint: {', '.join(missing)} not set; the startup script or the local "
                "backend sets these (run jobs with `runner submit`, not by hand)"
            )
        return cls(
            run_id=env["RUNNER_RUN_ID"],
            store_url=env["RUNNER_STORE"],
            attempt=int(env["RUNNER_ATTEMPT"]),
            checkpoint_dir=env.get("RUNNER_CHECKPOINT_DIR", "/var/lib/runner/checkpoints"),
            results_dir=env.get("RUNNER_RESULTS_DIR", "/var/lib/runner/results"),
            heartbeat_interval=float(env.get("RUNNER_HEARTBEAT_INTERVAL", "5")),
            sync_interval=float(env.get("RUNNER_SYNC_INTERVAL", "10")),
            grace_period=float(env.get("RUNNER_GRACE_PERIOD", "25")),
            instance=env.get("RUNNER_INSTANCE", socket.gethostname()),
            zone=env.get("RUNNER_ZONE", "local"),
            image=env.get("RUNNER_IMAGE", ""),
            prestaged_dir=env.get(PRESTAGED_ENV) or None,
            node=gang.Node.from_env(env),
            provisioning=env.get("RUNNER_PROVISIONING", ""),
        )


FROM_SPEC = "RUNNER_COMMAND_FROM_SPEC"  # set by gcp/startup.sh: the job is spec.json's command


def job_from_spec(cfg: AgentConfig) -> tuple[list[str], dict[str, str]]:
    """The job's argv and env from ``spec.json``.

    On a VM the startup script passes only scalars through metadata (COS has no JSON decoder, and
    guessing at an encoding is how arguments get mangled: docs/architecture.md#on-the-vm-cos); the structured part of the
    run stays in the spec ``runner submit`` wrote, decoded here by Python's json.
    """
    spec = RunRecord(open_store(cfg.store_url), cfg.run_id).read_spec()
    if spec is None:
        raise SystemExit(f"entrypoint: {cfg.store_url} has no spec.json for run {cfg.run_id}; "
                         "was the run submitted to this store?")
    if not spec.command or not all(isinstance(a, str) for a in spec.command):
        raise SystemExit(f"entrypoint: spec.json of {cfg.run_id} has no command (a list of strings): {spec.command!r}")
    env: dict[str, str] = {}
    for k, v in (spec.env or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k or "\0" in k + v:
            raise SystemExit(f"entrypoint: spec.json of {cfg.run_id} has an invalid env entry {k!r}={v!r}")
        if k.startswith("RUNNER_") and k in os.environ:
            log.warning("ignoring %s from the run's env: the runner sets it", k)
            continue
        if k == "LD_LIBRARY_PATH" and os.environ.get("RUNNER_GPU_LIB_DIR"):
            v = f"{os.environ['RUNNER_GPU_LIB_DIR']}:{v}"  # the driver first, never replaced
        env[k] = v
    return list(spec.command), env


class Agent:
    def __init__(self, cfg: AgentConfig, command: list[str]) -> None:
        self.cfg = cfg
        self.command = command
        self.store = open_store(cfg.store_url)
        self.record = RunRecord(self.store, cfg.run_id)
        self.terminating = threading.Event()
        self.job: subprocess.Popen[bytes] | None = None
        self.phase = "starting"
        self.workdir = tempfile.mkdtemp(prefix="runner-agent-")
        self.progress = ProgressTracker(os.path.join(self.workdir, "progress.json"))
        self.series = ProgressSeries()  # step and checkpoint age over time, for the manifest (ops report)
        self.superseded = False
        self.start_error: str | None = None  # why the job could not start, if it could not
        # The state being recorded, and why: said if the store refuses it.
        self._outcome: tuple[State, str | None] | None = None
        self._killed_at: float | None = None
        self._pump: threading.Thread | None = None  # copies the job's output to the log
        self.log_path = os.path.join(self.workdir, "job.log")
        prefix = self.record.name(RunRecord.CHECKPOINTS)
        if cfg.node.records_the_run:  # the checkpoint directory, and (entrypoint.shards) the commits
            self.checkpoints: DirectorySync = CommittingSync(self.store, cfg.checkpoint_dir, prefix, f"a{cfg.attempt}")
        else:  # a gang's other node: its own ranks' shards only (data-parallel weights are rank 0's)
            self.checkpoints = DirectorySync(self.store, os.path.join(cfg.checkpoint_dir, SHARDS_DIR),
                                             f"{prefix}{SHARDS_DIR}/", f"a{cfg.attempt}")
        self._log_uploaded_size = -1
        self._first_step_marked = False
        self.data: StagingProgress | None = None  # the run's staged data, once staging began
        # The checkpoint tiers (entrypoint.tiers): rank 0's passes stamp the primary and the local
        # disk; the mirror, if the run has one, is set up at start (``_open_mirror``).
        self.stamper = (Stamper(self.checkpoints, self.progress.step_at, cfg.attempt, cfg.checkpoint_dir)
                        if cfg.node.records_the_run and not cfg.node.in_gang else None)
        self.mirror_store: Store | None = None
        self.mirror: MirrorSync | None = None

    # ---- state helpers ----
    def _transition(self, move: str, reason: str | None = None, **changes: object) -> bool:
        """Our attempt's named transition ``move`` (a ``RunRecord`` method: ``job_started``,
        ``preempted``, ``errored``...), as the agent; False if the run moved on without us."""
        new = MOVES[move].to
        self._outcome = (new, reason)
        for _ in range(5):
            try:
                getattr(self.record, move)(Role.AGENT, ACTOR, reason=reason, **changes)
                return True
            except PreconditionFailed as e:
                # Someone wrote in between (a supervisor), or our own write landed and only its
                # response was lost (the retry then meets our new generation): look before retrying.
                cur = self.record.read_state()
                if cur and cur[0].state == new and cur[0].attempt == self.cfg.attempt and cur[0].updated_by == ACTOR:
                    return True
                if cur is not None:
                    log.warning("recording %s lost to %s, who wrote %s (attempt %d); %s", new.value,
                                cur[0].updated_by or "?", cur[0].state.value, cur[0].attempt,
                                "trying again" if not cur[0].state.terminal else "the run has ended")
                else:
                    log.warning("recording %s lost: %s", new.value, e)
                continue
            except IllegalTransition as e:
                log.warning("not recording %s: %s (state written by %s)", new.value, e, e.holder or "?")
                return False
        return False

    # ---- the run ----
    def run(self) -> int:
        cfg = self.cfg
        if self.record.stop_requested():
            log.info("run %s has a .stop marker; not starting the job", cfg.run_id)
            return 0
        cur = self.record.read_state()
        if cur is None or cur[0].attempt != cfg.attempt:
            log.error("state.json is not for attempt %d; a newer attempt owns this run", cfg.attempt)
            return 0

        node = cfg.node
        if not node.records_the_run and cur[0].state.terminal:
            log.info("run %s has ended (%s); node %d does not start its job", cfg.run_id, cur[0].state.value, node.rank)
            return 0
        if node.in_gang and not self._find_master():
            return 1
        self.phase = "restoring"
        self._open_mirror()
        try:
            resumed = resume(cfg.checkpoint_dir, self.store, self.record.name(RunRecord.CHECKPOINTS),
                             self.mirror_store, prestaged_dir=cfg.prestaged_dir, use_local=not node.in_gang)
        except NoSpaceForRestore as e:
            return self._restore_does_not_fit(e)
        done = resumed.restored
        restored = done.names
        if resumed.in_primary:  # the kept disk's files the store has: not uploaded again
            self.checkpoints.adopt(resumed.in_primary)
        log.info("restored %d checkpoint file(s), %d bytes, in %.2f s (%d stream(s), %d prestaged)",
                 len(restored), done.bytes, done.seconds, done.streams, done.prestaged)
        self._mark(CHECKPOINT_RESTORED, **resumed.detail())
        if resumed.tier is not None and node.records_the_run:
            self._best_effort("journal note", lambda: self.record.event(
                ACTOR, None, None, f"resumed from the {resumed.tier} checkpoint tier at step {resumed.step}",
                attempt=cfg.attempt, tier=resumed.tier, step=resumed.step))
        data_failed = self._stage_data()
        if data_failed is not None:
            return data_failed
        os.makedirs(cfg.results_dir, exist_ok=True)
        started = time.time()
        manifest = {
            "run_id": cfg.run_id,
            "attempt": cfg.attempt,
            "instance": cfg.instance,
            "zone": cfg.zone,
            "image": cfg.image,
            "hostname": socket.gethostname(),
            "command": self.command,
            "started_at": started,
            "resumed_from": restored,
            # Which model this attempt ran on: cost prices each attempt at its own model's price.
            **({"provisioning": cfg.provisioning} if cfg.provisioning else {}),
        }
        if node.records_the_run:
            self.record.write_manifest(cfg.attempt, manifest)
        if node.records_the_run and cur[0].state != State.RUNNING and not self._transition(
            "job_started", "job started", attempt=cfg.attempt, instance=cfg.instance, zone=cfg.zone
        ):
            return 0

        self.phase = "running"
        self.progress.pattern = self._progress_pattern()
        self._install_signal_handlers()
        start_code = self._start_job(resumed=bool(restored))
        bg = BackgroundSync(self.checkpoints, cfg.sync_interval)
        bg.start()
        if self.mirror is not None:
            self.mirror.start()
        if not node.records_the_run:  # there at once: rank 0 counts a node that never reported as lost
            self._best_effort("heartbeat", self._write_heartbeat)
        hb_stop = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(hb_stop,), daemon=True)
        hb.start()

        code = start_code if start_code is not None else self._wait_for_job()
        self._drain_output()
        self.progress.poll_file()
        self._mark_first_step()  # a job that ended before the next heartbeat
        self.phase = "finishing"
        bg.stop(timeout=0)  # the final pass below takes the sync lock after any pass in flight
        if self.superseded:
            log.error("a newer attempt owns this run; not syncing or recording anything")
            return code
        if not node.records_the_run:
            hb_stop.set()
            hb.join(timeout=max(5.0, cfg.heartbeat_interval))  # its last write must not land after ours
            return self._end_as_peer(code)
        # A job we had to SIGKILL may have been half-way through writing a checkpoint in place:
        # files it touched after the kill order are not published (atomic renames are unaffected
        # only if they landed before it).
        sync_ok = self._best_effort("final checkpoint sync", lambda: self.checkpoints.sync_once(
            modified_before=self._killed_at))
        self._final_mirror_pass()
        results_ok = self._best_effort("results sync", lambda: DirectorySync(
            self.store, cfg.results_dir, self.record.name(RunRecord.RESULTS), f"a{cfg.attempt}"
        ).sync_once(modified_before=self._killed_at))
        hb_stop.set()
        self._best_effort("log upload", lambda: self._upload_log(force=True))
        self._best_effort("heartbeat", self._write_heartbeat)
        manifest.update(finished_at=time.time(), exit_code=code, **self._work_done())
        self._best_effort("manifest", lambda: self.record.write_manifest(cfg.attempt, manifest))
        unrecorded = self._record_final(lambda: self._record_outcome(code, bool(sync_ok) and bool(results_ok)),
                                        ends_if_unknown=code == 0)
        if unrecorded is not None:
            return unrecorded
        # A job's own exit 74 (EX_IOERR is common) must not read as "outcome not recorded".
        return 1 if code == OUTCOME_UNRECORDED else code

    def _open_mirror(self) -> None:
        """The run's mirror (pinned in its spec), for the restore and the sync; none in a gang.
        A mirror that cannot be opened is logged and left out: the primary still holds the run."""
        if self.stamper is None:
            return
        try:
            spec = self.record.read_spec()
        except (StoreError, OSError, ValueError) as e:
            log.warning("cannot read the run's spec for its mirror (%s); RUNNER_MIRROR if set", e)
            spec = None
        url = mirror_url_for(spec.mirror if spec else None)
        if not url:
            return
        try:
            self.mirror_store = open_store(url)
        except (StoreError, OSError, ValueError) as e:
            log.error("checkpoint mirror %s cannot be opened: %s; checkpoints go to the primary only", url, e)
            return
        self.mirror = MirrorSync(self.checkpoints, self.stamper, self.mirror_store, self.progress.step_at,
                                 self.cfg.attempt)
        log.info("checkpoints are mirrored to %s after the primary has them", url)

    def _final_mirror_pass(self) -> None:
        """After the job: the mirror's last pass, only when the job ended on its own. Inside a
        preemption notice the grace period belongs to the primary's sync and the outcome; the
        mirror lags by what the last pass would have sent (the heartbeat says how much)."""
        if self.mirror is None:
            return
        self.mirror.stop(timeout=0)
        if not self.terminating.is_set():
            self._best_effort("final mirror sync", self.mirror.sync_once)

    def _find_master(self) -> bool:
        """Give the job rank 0's address (``gang.master_addr``); False (logged) if none came."""
        cfg = self.cfg
        addr = gang.master_addr(self.record, cfg.attempt, os.environ, timeout=MASTER_ADDR_WAIT)
        if addr is None:
            log.error("node %d: rank 0's address is not in attempt %d's create claim after %.0fs; "
                      "ending so that the supervisor restarts the gang", cfg.node.rank, cfg.attempt, MASTER_ADDR_WAIT)
            return False
        port = int(os.environ.get(gang.ENV_MASTER_PORT) or gang.DEFAULT_MASTER_PORT)
        # Whatever the backend could not say (GCE: all but the rank and N) is filled in here.
        for k, v in gang.node_env(cfg.run_id, cfg.attempt, cfg.node.rank, cfg.node.nnodes, addr, port).items():
            os.environ.setdefault(k, v)
        return True

    def _end_as_peer(self, code: int) -> int:
        """A gang node other than rank 0 ends: its heartbeat says how (rank 0 and the supervisor
        read it: a clean exit is not a lost node), its log is uploaded; the run's state is rank 0's."""
        self.phase = gang.TERMINATING if self.terminating.is_set() else gang.EXITED
        self._best_effort("final shard sync", lambda: self.checkpoints.sync_once(modified_before=self._killed_at))
        self._best_effort("log upload", lambda: self._upload_log(force=True))
        self._best_effort("heartbeat", lambda: self._write_heartbeat(exit_code=code))
        return code

    def _lost_peer(self) -> gang.PeerVerdict:
        """Rank 0 of a gang, its job failed: what happened to the other nodes (``gang.judge_peers``)."""
        cfg = self.cfg
        return gang.judge_peers(self.record, cfg.node, cfg.attempt, stale_after=3 * cfg.heartbeat_interval + 5,
                                wait=min(10.0, max(2.0, cfg.grace_period / 2)))

    def _progress_pattern(self) -> ProgressPattern | None:
        """The run's ``--progress-regex``, pinned in its spec; None without one. A bad or unreadable
        one is logged and left out: it must never stop the job, only its progress reports."""
        try:
            spec = self.record.read_spec()
            pattern = ProgressPattern.from_settings(spec.settings if spec is not None else None)
        except Exception as e:  # noqa: BLE001 - a store error or a hand-edited spec: the job runs anyway
            log.warning("not reading progress from the job's output: %s", e)
            return None
        if pattern is not None:
            log.info("reading progress from output lines matching %r", pattern.regex.pattern)
        return pattern

    def _stage_data(self) -> int | None:
        """Stage the run's ``--data`` before the job starts (``entrypoint.staging``), with
        heartbeats saying how far it got; the exit code to end with if it cannot be staged.

        A missing source, a permission error or a damaged object FAILS the run with the fix:
        every attempt would meet the same source, so a restart would only repeat the failure.
        Anything else (the network, a full disk) ends this attempt the way a crash does, for
        the supervisor to restart it; what was copied stays recorded and is not copied again.
        """
        spec = self.record.read_spec()
        if spec is None or not getattr(spec, "data", None):
            return None
        self.phase = "staging"
        self.data = StagingProgress()
        stop = threading.Event()
        beat = threading.Thread(target=self._staging_heartbeats, args=(stop,), daemon=True)
        beat.start()
        try:
            counts = stage_run_data(spec, self.data)
            log.info("data staged: %s", counts)
            d = self.data.as_dict()
            self._mark(DATA_STAGED, files=d["files_total"], bytes=d["bytes_total"], copied_files=d["copied_files"],
                       copied_bytes=d["copied_bytes"], kept_files=d["kept_files"], seconds=d["seconds"])
            return None
        except DataStagingError as e:
            return self._fail_before_the_job(e, peers_only_log=True)
        finally:
            stop.set()
            beat.join(timeout=5)
            self._best_effort("heartbeat", self._write_heartbeat)

    def _staging_heartbeats(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.heartbeat_interval):
            self._best_effort("heartbeat", self._write_heartbeat)

    def _restore_does_not_fit(self, e: NoSpaceForRestore) -> int:
        """The checkpoint does not fit on this machine's disk: the run FAILS, with that reason.

        Not a preemption, and not a restart counted against max_restarts, because no restart
        can do better: every attempt gets the same disk (``boot_disk_gb`` is pinned in the run's
        spec) and the same checkpoint or a bigger one, so each would fail the same way seconds
        after it booted. Before, a crash here left no outcome and the supervisor restarted the
        run as "preempted or lost" until max_restarts was gone (three restarts in six seconds),
        and nobody was told about the disk. The checkpoint in the store is untouched: with a
        bigger disk, ``runner submit --restart`` resumes from it.
        """
        return self._fail_before_the_job(e)

    def _fail_before_the_job(self, e: Exception, peers_only_log: bool = False) -> int:
        """Record the run FAILED for ``e``, found before its job started (no restart would do
        better), with the reason in the job's log too so that ``ops logs`` shows it; the exit code.
        ``peers_only_log``: a gang's nodes other than rank 0 only log it (rank 0 meets the same
        data and records the run)."""
        log.error("%s", e)
        try:
            with open(self.log_path, "ab") as f:
                f.write(f"runner: {e}\n".encode())
        except OSError as log_err:
            log.error("cannot write the job log (%s)", log_err)
        self._best_effort("log upload", lambda: self._upload_log(force=True))
        if peers_only_log and not self.cfg.node.records_the_run:
            return 1
        unrecorded = self._record_final(lambda: self._transition("failed", str(e), expect_attempt=self.cfg.attempt))
        return 1 if unrecorded is None else unrecorded

    def _record_final(self, record: Callable[[], object], ends_if_unknown: bool = True) -> int | None:
        """Run ``record`` (the write of the attempt's outcome); the exit code to end with if the
        store refused it and only that code can tell the supervisor, else None.

        A full store (or a read-only one, or one over quota) must not turn a known outcome into
        a crash: a traceback was all anyone saw, and the supervisor, finding the run live with
        its instance gone, took the attempt for preempted and ran the job again. Now the agent
        says on stderr what it could not record and tries a note in the journal. An outcome that
        ends the run (SUCCEEDED, FAILED) gives ``OUTCOME_UNRECORDED``, which the supervisor
        records as a failure with this reason: a restart would redo finished work. One that asks
        for a new attempt anyway (PREEMPTED, ERRORED) gives None: the supervisor's "preempted or
        lost" restarts it, which is what it asked for. When the store failed before the outcome
        was even chosen, ``ends_if_unknown`` says which of the two it would have been (a job that
        exited 0 ends the run; any other may still be retried).
        """
        self._outcome = None  # not a state recorded before (RUNNING): the one ``record`` tries
        try:
            record()
            return None
        except (StoreError, OSError) as e:
            state, reason = self._outcome or (None, None)
            ends_run = ends_if_unknown if state is None else state.terminal
            what = "an outcome" if state is None else state.value + (f" ({reason})" if reason else "")
            then = (f"Exiting with {OUTCOME_UNRECORDED} (outcome not recorded): the supervisor fails the "
                    "run with this reason instead of restarting it" if ends_run else
                    "The supervisor will find the attempt gone and start the next one, as this outcome asks")
            msg = (f"attempt {self.cfg.attempt} ended as {what}, but the store could not record it: {e}; "
                   f"free space in the store (or fix its permissions or quota). {then}")
            try:
                self.record.event(ACTOR, None, None, msg, attempt=self.cfg.attempt)
            except (StoreError, OSError) as note_err:
                log.warning("the journal note failed too: %s", note_err)
            log.error("%s", msg)  # last: the line the supervisor quotes from the container's output
            return OUTCOME_UNRECORDED if ends_run else None

    def _work_done(self) -> dict[str, object]:
        """How far this attempt got and what it saved, kept per attempt in its manifest.

        heartbeat.json is overwritten by the next attempt; these let ``runner.ops.cost`` tell how
        much work a preemption threw away (steps after the last published checkpoint).
        """
        progress, changed_at = self.progress.snapshot()
        first = self.progress.first_step()
        return {
            "first_progress": {"step": first[0], "time": first[1]} if first else None,
            "last_progress": {"step": progress.get("step"), "time": changed_at} if "step" in progress else None,
            "checkpoint_at": self.checkpoints.stats.newest_written_at,
            "series": self.series.to_dict(),
        }

    @property
    def actor(self) -> str:
        """Who marks this attempt's phases: the agent, and on which machine."""
        return f"{ACTOR}:{self.cfg.instance}"

    def _mark(self, phase: str, at: float | None = None, **detail: object) -> None:
        """Mark a phase of this attempt's recovery timeline. Best effort: the timeline is for
        reading a recovery afterwards, never a reason to hold up or fail the job. A gang's
        timeline is rank 0's (the marks are create-only: the first writer's would stand)."""
        if not self.cfg.node.records_the_run:
            return
        try:
            self.record.mark_phase(self.cfg.attempt, phase, self.actor, at=at, **detail)
        except Exception as e:  # noqa: BLE001 - a store, a network or a bug: the job goes on
            log.warning("could not mark phase %s of attempt %d: %s", phase, self.cfg.attempt, e)

    def _mark_first_step(self) -> None:
        """``first_step`` once, when the job has reported a step this attempt; at the time the
        step was first seen, not the time of this call (a heartbeat later)."""
        first = self.progress.first_step()
        if first is None or self._first_step_marked:
            return
        self._first_step_marked = True
        step, at = first
        self._mark(FIRST_STEP, at=at, step=step)

    @staticmethod
    def _best_effort(what: str, step: Callable[[], object]) -> object:
        """A finishing step that fails is logged and reported, never a reason to skip the outcome."""
        try:
            result = step()
            return True if result is None else result
        except Exception as e:  # noqa: BLE001 - the outcome must be recorded whatever broke here
            log.error("%s failed: %s", what, e)
            return False

    def _record_outcome(self, code: int, synced: bool) -> None:
        sync_err = self.checkpoints.stats.last_error
        if self.start_error is not None:
            # Permanent: the same image and command fail the same way on every VM, so neither
            # a restart nor retry_on_failure can help. The run ends now, with the reason.
            self._transition("failed", f"{self.start_error} (exit {code}); fix the command "
                             "or the image and submit again", expect_attempt=self.cfg.attempt, exit_code=code)
        elif self.terminating.is_set():
            if self.record.stop_requested():
                self._transition("stopped", "stopped by user", expect_attempt=self.cfg.attempt, exit_code=code)
            else:
                note = "" if synced else f"; final sync incomplete: {sync_err}"
                self._transition("preempted", f"SIGTERM (preemption notice){note}",
                                 expect_attempt=self.cfg.attempt, exit_code=code)
        elif code == 0 and synced:
            self._transition("succeeded", "job exited 0", attempt=self.cfg.attempt)
        elif code == 0:
            self._transition("failed", f"job exited 0 but the final sync failed: {sync_err}",
                             expect_attempt=self.cfg.attempt, exit_code=0)
        else:
            peers = self._lost_peer() if self.cfg.node.in_gang else gang.PeerVerdict()
            if peers.lost:
                # Not the job's failure: a peer died under it. The generation ends; all of it restarts.
                self._transition("preempted", f"{peers.lost}; rank 0's job exited with code {code}",
                                 expect_attempt=self.cfg.attempt, exit_code=code)
                return
            why = f"job exited with code {code}" + (f" ({peers.failed})" if peers.failed else "")
            spec = self.record.read_spec()
            cur = self.record.read_state()
            failures = cur[0].failures if cur else 0
            if spec is not None and cur is not None and cur[0].may_retry_failure(spec.retry_on_failure):
                self._transition(
                    "errored",
                    f"{why}; retry {failures + 1} of {spec.retry_on_failure}",
                    attempt=self.cfg.attempt, exit_code=code,
                )
            else:
                self._transition("failed", why, expect_attempt=self.cfg.attempt, exit_code=code)

    def _start_job(self, resumed: bool) -> int | None:
        """Start the job; None when it runs, else the exit code of a start that failed."""
        env = dict(os.environ)
        env.update(
            RUNNER_CHECKPOINT_DIR=self.cfg.checkpoint_dir,
            RUNNER_RESULTS_DIR=self.cfg.results_dir,
            RUNNER_PROGRESS_FILE=self.progress.progress_file or "",
        )
        if resumed:
            env["RUNNER_RESUME_FROM"] = self.cfg.checkpoint_dir
        else:
            env.pop("RUNNER_RESUME_FROM", None)
        log.info("starting job (attempt %d): %s", self.cfg.attempt, self.command)
        try:
            self.job = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own process group, so signals reach all its children; but the agent's
                # session: on kernels with autogroup, a new session is a new scheduling group
                # that shares CPU with ours as an equal, and the sync thread's low priority
                # (checkpoints.lower_thread_priority) would count for nothing against the job.
                **_own_process_group(),
            )
        except OSError as e:
            return self._failed_start(e)
        self._pump = threading.Thread(target=self._pump_output, daemon=True)
        self._pump.start()
        return None

    def _failed_start(self, e: OSError) -> int:
        """The job could not even start: keep the reason in its log and say which exit code.

        The codes are the shell's: 127 for a program that is not there, 126 for one that
        cannot be executed. Exiting here instead (as before) left RUNNING with no outcome, so
        the supervisor took the run for lost and restarted it until max_restarts.
        """
        self.start_error = f"cannot start {self.command[0]!r}: {e.strerror or e}"
        code = 127 if isinstance(e, FileNotFoundError) else 126
        log.error("%s", self.start_error)
        try:
            with open(self.log_path, "ab") as f:
                f.write(f"runner: {self.start_error} ({e}); exit code {code}\n".encode())
        except OSError as log_err:
            log.error("cannot write the job log (%s)", log_err)
        return code

    def _pump_output(self) -> None:
        """Drain the job's output whatever happens: a full pipe would stall the job itself."""
        assert self.job and self.job.stdout
        logf = None
        try:
            logf = open(self.log_path, "ab")
        except OSError as e:
            log.error("cannot open the job log (%s); output goes to the console only", e)
        for raw in iter(self.job.stdout.readline, b""):
            try:
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()
                if logf is not None:
                    logf.write(raw)
                    logf.flush()
                self.progress.feed_line(raw.decode("utf-8", "replace"))
            except Exception as e:  # noqa: BLE001 - keep draining
                log.warning("job output handling failed: %s", e)
        if logf is not None:
            logf.close()

    def _drain_output(self) -> None:
        """Let the pump copy what the job left in its pipe (up to 64 KiB, often its traceback)
        into the log before the final upload. Bounded: a child of the job that keeps the pipe
        open must not hold up the final sync inside the preemption notice."""
        if self._pump is not None:
            self._pump.join(timeout=min(5.0, max(0.5, self.cfg.grace_period * 0.1)))

    def _wait_for_job(self) -> int:
        assert self.job
        while True:
            try:
                code = self.job.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.terminating.is_set():
                # Leave the final sync a share of the grace period before the container dies.
                deadline = self._term_at + max(1.0, self.cfg.grace_period * 0.6)
                if time.time() > deadline and self._killed_at is None:
                    log.warning("job ignored SIGTERM; killing it to leave time for the final sync")
                    self._killed_at = time.time()
                    self._signal_job(signal.SIGKILL)
        return 128 - code if code < 0 else code

    # ---- signals ----
    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_term(self, signum: int, _frame: object) -> None:
        if not self.terminating.is_set():
            self._term_at = time.time()
            self.terminating.set()
            log.info("received signal %d: forwarding SIGTERM to the job", signum)
            if not self.cfg.node.records_the_run:
                # Before the job hears of it: rank 0's job will fail on the lost peer, and rank 0
                # must find this node's notice to record a preemption, not the job's failure.
                self.phase = gang.TERMINATING
                self._best_effort("heartbeat", self._write_heartbeat)
        self._signal_job(signal.SIGTERM)

    def _signal_job(self, sig: int) -> None:
        if self.job and self.job.poll() is None:
            try:
                os.killpg(self.job.pid, sig)
            except ProcessLookupError:
                pass

    # ---- heartbeat and logs ----
    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.heartbeat_interval):
            try:
                self._write_heartbeat()
                self._upload_log()
                self._check_still_owner()
            except Exception as e:  # noqa: BLE001 - a dead heartbeat thread would look like a stall
                log.warning("heartbeat failed: %s", e)
            self._mark_first_step()

    def _check_still_owner(self) -> None:
        """Stop the job if a newer attempt took the run over (this VM was given up for lost)."""
        cur = self.record.read_state()
        if cur is not None and cur[0].attempt != self.cfg.attempt and not self.superseded:
            log.error("run %s moved on to attempt %d; stopping this attempt's job",
                      self.cfg.run_id, cur[0].attempt)
            self.superseded = True
            self._term_at = time.time()
            self.terminating.set()
            self._signal_job(signal.SIGTERM)

    def _write_heartbeat(self, exit_code: int | None = None) -> None:
        self.progress.poll_file()
        progress, changed_at = self.progress.snapshot()
        self.series.sample(time.time(), progress.get("step"), self.checkpoints.stats.newest_written_at)
        node = self.cfg.node
        hb = Heartbeat(
            time=time.time(),
            attempt=self.cfg.attempt,
            phase=self.phase,
            progress=progress,
            progress_changed_at=changed_at,
            sync={**self.checkpoints.stats.as_dict(), **({"mirror": self.mirror.lag()} if self.mirror else {})},
            rate=self.progress.rate(),
            data=self.data.as_dict() if self.data is not None else None,
            instance=self.cfg.instance if node.in_gang else None,
            exit_code=exit_code,
        )
        if node.records_the_run:
            self.record.write_heartbeat(hb)
        else:
            self.record.write_node_heartbeat(node.rank, hb)

    def _upload_log(self, force: bool = False) -> None:
        try:
            size = os.path.getsize(self.log_path)
        except FileNotFoundError:
            return
        if size == self._log_uploaded_size and not force:
            return
        # The job keeps appending: upload a frozen copy so the checksum matches what is sent.
        snap = self.log_path + ".snap"
        shutil.copyfile(self.log_path, snap)
        self.store.upload_file(self.record.name(RunRecord.log_name(self.cfg.attempt, self.cfg.node.rank)), snap)
        self._log_uploaded_size = size


def _own_process_group() -> dict[str, object]:
    """Popen arguments that put the job in a new process group of the agent's session."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # 3.10; safe here: no other thread runs yet


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s entrypoint %(levelname)s %(message)s"
    )
    from_spec = os.environ.get(FROM_SPEC) == "1"
    if not argv and not from_spec:
        print("usage: python -m entrypoint -- COMMAND [ARGS...]  (or no COMMAND with "
              f"{FROM_SPEC}=1: the run's spec.json says what to run)", file=sys.stderr)
        return 2
    cfg = AgentConfig.from_env()
    if from_spec:
        if argv:  # docker run IMAGE with no arguments still passes the image's own CMD
            log.warning("ignoring %s (the image's CMD?): %s=1, the command is spec.json's", argv, FROM_SPEC)
        argv, job_env = job_from_spec(cfg)
        os.environ.update(job_env)  # the job inherits the agent's environment
    agent = Agent(cfg, argv)
    return agent.run()

"""The chaos suite: the failures a hostile operator provokes, replayed on loopback, bounded in time.

One file per scenario family (``test_<family>.py``); shared stand-ins and knobs in
``tests/chaos/harness.py``; every test here carries the ``chaos`` marker (``pytestmark``).

- ``make test`` runs the short form (a few cycles each, seconds per scenario);
- ``make chaos`` runs the long form (``RUNNER_CHAOS=long``); ``RUNNER_CHAOS_CYCLES=N`` forces
  a cycle count. Scenarios ask ``harness.cycles(short, long)`` how many to run.

Families: ``test_double_vm`` (slow passes, racing supervisors: never two live instances of one
run), ``test_hung_neighbours`` (jobs that ignore SIGTERM must not slow other runs' restarts),
``test_supervisor_chaos`` (real CLI and containers: supervisor kill -9s, hung jobs, preemptions;
marked ``docker`` too, so ``make test-fast`` skips it), ``test_lost_replies`` (GCS applies writes
and loses their replies: journal and webhooks exactly once, no uncreated attempt, no bogus
restart), ``test_hostile_input`` (generated hostile input: one line, the documented exit code,
nothing written).
"""

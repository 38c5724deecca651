"""The supervisor's rules for sharing runs and surviving trouble (runner/launch/supervisor.py):
two supervisors on one run never both create (a create-only claim per attempt, compare-and-swap
state writes); an instance is never judged gone on a listing older than the state; one run's
trouble, a failed instance list or a failed run list never stops supervision of the rest.

World: the in-memory backend and a local store on the test's clock (tests/standins/
supervised_runs.py).
"""

from __future__ import annotations

from entrypoint.record import State

A1, A2 = "runner-exp-1-a1", "runner-exp-1-a2"


def test_two_supervisors_on_one_new_run_create_one_instance(supervised):
    w = supervised
    rec = w.submit()
    first, second = w.supervisor("supervisor@a"), w.supervisor("supervisor@b")
    # The second looks while the first's create is in flight (claimed, not listed yet).
    w.backend.on_create = lambda plan: second.reconcile("exp-1")
    first.reconcile("exp-1")
    w.backend.on_create = None
    second.reconcile("exp-1")
    assert w.backend.creates() == [A1] and set(w.backend.instances()) == {A1}
    assert (w.state(rec).state, w.state(rec).attempt) == (State.PROVISIONING, 1)


def test_two_supervisors_restarting_one_preempted_run_create_one_next_attempt(supervised):
    w = supervised
    rec = w.submit()
    first, second = w.supervisor("supervisor@a"), w.supervisor("supervisor@b")
    first.reconcile("exp-1")
    w.agent_running(rec)
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    listing = w.backend.list()  # both passes listed before either acted
    w.backend.on_create = lambda plan: second.reconcile("exp-1", list(listing))
    first.reconcile("exp-1", list(listing))
    w.backend.on_create = None
    second.reconcile("exp-1", list(listing))
    assert w.backend.creates() == [A1, A2] and set(w.backend.instances()) == {A2}
    assert w.state(rec).attempt == 2


def test_a_pass_never_judges_an_instance_gone_on_a_listing_older_than_the_state(supervised):
    """A pass lists once for all runs; another supervisor may restart a run meanwhile. The old
    listing lacks the new instance: acting on it would start a third beside the live second."""
    w = supervised
    rec = w.submit()
    slow, quick = w.supervisor("supervisor@slow"), w.supervisor("supervisor@quick")
    slow.reconcile("exp-1")
    w.agent_running(rec)
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    listing = w.backend.list()  # the slow pass's listing: attempt 1 gone, attempt 2 not there yet
    quick.reconcile("exp-1")
    w.agent_running(rec)  # attempt 2's job started
    slow.reconcile("exp-1", listing)
    st = w.state(rec)
    assert (st.state, st.attempt) == (State.RUNNING, 2)
    assert w.backend.creates() == [A1, A2] and set(w.backend.instances()) == {A2}


def test_a_pass_whose_instance_list_fails_lists_each_run_instead(supervised):
    w = supervised
    w.submit("exp-1")
    w.submit("exp-2")
    w.backend.list_failures = 1
    states = w.supervisor().reconcile_all()
    assert {r: s.state for r, s in states.items()} == {"exp-1": State.PROVISIONING, "exp-2": State.PROVISIONING}
    assert sorted(w.backend.instances()) == ["runner-exp-1-a1", "runner-exp-2-a1"]


def test_a_failing_run_list_ends_only_this_pass(supervised, monkeypatch):
    w = supervised
    w.submit()
    sup = w.supervisor()
    real_list = type(w.store).list_prefixes

    def failing_once(self, prefix, *a, **kw):  # the store is unreachable for one call
        monkeypatch.setattr(type(w.store), "list_prefixes", real_list)
        raise ConnectionError("the store is unreachable")

    monkeypatch.setattr(type(w.store), "list_prefixes", failing_once)
    assert sup.reconcile_all() == {}
    assert sup.reconcile_all()["exp-1"].state == State.PROVISIONING


def test_one_runs_damaged_record_does_not_stop_the_others(supervised):
    w = supervised
    w.submit("exp-1")
    w.submit("exp-2")
    w.store.write("runs/exp-1/spec.json", b"{not json")
    sup = w.supervisor()
    states = sup.reconcile_all()
    assert set(states) == {"exp-2"} and states["exp-2"].state == State.PROVISIONING
    assert sup.pass_error_count == 1 and sup.pass_errors[0].startswith("exp-1: ")


def test_two_supervisors_that_both_decided_to_create_make_one_create_call(supervised, monkeypatch):
    """Both read "no claim, no instance" (the creator crashed between its state write and its
    create); the create-only claim lets one of them create, whatever zone each would pick."""
    from entrypoint.record import RunRecord

    w = supervised
    rec = w.submit()
    rec.transition(State.PROVISIONING, "supervisor@crashed", attempt=1, instance=A1)
    first, second = w.supervisor("supervisor@a"), w.supervisor("supervisor@b")
    real_claim = RunRecord.claim_create

    def second_claims_first(self, attempt, actor, *args, **kwargs):
        monkeypatch.setattr(RunRecord, "claim_create", real_claim)
        second.reconcile("exp-1")  # it too found no claim and creates, before the first claims
        return real_claim(self, attempt, actor, *args, **kwargs)

    monkeypatch.setattr(RunRecord, "claim_create", second_claims_first)
    first.reconcile("exp-1")
    assert RunRecord.claim_create is real_claim, "the race did not run: the create path no longer claims here"
    assert w.backend.creates() == [A1] and set(w.backend.instances()) == {A1}

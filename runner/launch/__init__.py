"""Launching runs and keeping them alive: submit, the supervisor's reconcile pass, following a run,
and the compute backends (``gce``, ``local``) it drives."""

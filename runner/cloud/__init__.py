"""Setting up and checking a Google project: client construction, admin REST calls, ``init``,
``doctor`` and the hosted supervisor (Cloud Run job + Cloud Scheduler)."""

"""A simulated COS VM for running ``gcp/startup.sh`` and ``gcp/shutdown.sh`` for real.

The script runs in a container with CAP_SYS_ADMIN (bash, curl and coreutils like COS) on the host network,
talking to the host's Docker through its socket, so the job container it starts is a real one.
What a VM has and a test machine does not is stood in for:

- ``bin/``: shims found first on PATH for ``cos-extensions``, ``docker-credential-gcr``,
  ``poweroff`` and a ``docker`` wrapper (records every call, answers ``pull`` itself, passes the
  rest to the host's real client). Each records its argv under ``COS_SIM_CALLS``.
- ``nvidia-smi``: copied into a fake nvidia root; fails until ``cos-extensions install gpu`` ran.
- ``fakes.py``: the metadata server (403 without ``Metadata-Flavor: Google``, like the real one)
  and the Google APIs the script calls (GCS media upload, Compute instance delete).
- ``vm.py``: boots the simulated VM and collects what it did.
"""

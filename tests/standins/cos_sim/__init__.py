"""A simulated COS VM for running ``gcp/startup.sh`` and ``gcp/shutdown.sh`` for real.

The script runs in a container with CAP_SYS_ADMIN (bash, curl and coreutils like COS) on the host network,
talking to the host's Docker through its socket, so the job container it starts is a real one.
What a VM has and a test machine does not is stood in for:

- ``bin/``: shims found first on PATH for ``cos-extensions``, ``docker-credential-gcr``,
  ``poweroff`` and a ``docker`` wrapper (records every call, answers ``pull`` itself, passes the
  rest to the host's real client). Each records its argv under ``COS_SIM_CALLS``.
- ``nvidia-smi``: copied into a fake nvidia root; fails until ``cos-extensions install gpu`` ran
  in this power cycle (``CosVm.power_cycle`` is a STOP/start: COS forgets the driver's kernel
  modules, keeps the disk and its Docker images).
- ``cos-extensions`` runs its installer as a container (``gcr.io/cos-cloud/cos-gpu-installer``,
  in the foreground, as COS does), so it fails while Docker is not up (``boot(docker_ready_after=)``)
  and ``COS_SIM_DRIVER=hang`` leaves a real installer container to clean up.
- One Docker host stands in for each VM's own daemon: the ``docker`` shim labels what it runs
  with the VM (``cos-sim.vm=NAME``) and ``docker ps`` sees only that VM's containers.
- ``fakes.py``: the metadata server (403 without ``Metadata-Flavor: Google``, like the real one)
  and a tap that records the Google API calls the script makes (GCS media upload, Compute
  instance delete) on their way to the GCS emulator and the Compute stand-in.
- ``vm.py``: boots the simulated VM and collects what it did: ``CosVm.boot(env)`` runs
  ``gcp/startup.sh``; ``CosVm.boot_from_metadata(fake_metadata, env)`` runs the
  ``startup-script`` (or ``shutdown-script``) text a GCE guest finds in its metadata.
"""

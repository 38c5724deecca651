# The workload image: the entrypoint agent plus the job's code.
# Layers are ordered so that a code-only change rebuilds in seconds: dependencies first, code last.
#
# BASE_IMAGE defaults to a public Python image for real users. The tests and the demo build it
# from a locally bootstrapped Debian base (scripts/setup-test-env.sh), since no registry is
# reachable there; that base already carries the dependencies, so the pip step needs no network.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONPATH=/opt/runner

WORKDIR /opt/runner
COPY entrypoint/requirements.txt /opt/runner/entrypoint/requirements.txt
RUN python3 -m pip install -r /opt/runner/entrypoint/requirements.txt

COPY entrypoint/ /opt/runner/entrypoint/
COPY examples/ /opt/runner/examples/

ENTRYPOINT ["python3", "-m", "entrypoint", "--"]

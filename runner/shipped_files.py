"""Where the files this runner builds from are, in a checkout and in an installed wheel alike.

The commands read files that are not Python modules: the workload image's ``Dockerfile`` with its
allowlists (``.dockerignore``, ``.gcloudignore``) and ``entrypoint/requirements.txt``,
``cloudbuild.yaml``, and the VM's ``gcp/startup.sh``/``shutdown.sh``. In a checkout they are in the
repository's root, beside ``runner/``; the wheel (setup.py) puts the same files beside the same
packages in ``cos_spot_runner/_lib/``. So "the folder that holds the ``runner`` package" is the
answer in both layouts, and every caller asks here rather than guessing from its own ``__file__``
(issue 20 §15: a pip-installed runner must build and deploy without a checkout).
"""

from __future__ import annotations

from pathlib import Path

CLOUDBUILD_YAML = "cloudbuild.yaml"
DOCKERFILE = "Dockerfile"


class MissingShippedFile(Exception):
    """A file this runner ships is not where it should be: a broken install or checkout."""


def root() -> Path:
    """The folder that holds ``runner/``, ``entrypoint/``, ``gcp/``, ``examples/`` and the build files:
    the checkout's root, or ``_lib`` inside the installed ``cos_spot_runner``."""
    return Path(__file__).resolve().parent.parent


def shipped(relative: str) -> Path:
    """The shipped file ``relative`` (e.g. ``gcp/startup.sh``); raises ``MissingShippedFile``
    with the fix when it is absent."""
    path = root() / relative
    if not path.is_file():
        raise MissingShippedFile(f"{relative} is missing from {root()}: this runner's installation is "
                                 "incomplete; reinstall it (pip install --force-reinstall cos-spot-runner, "
                                 "or pip install -e . in a checkout)")
    return path


def workload_context() -> Path:
    """The workload image's build context (agent + examples, ``Dockerfile`` and its allowlists):
    what `make image` builds in a checkout, and ``runner build --workload`` anywhere."""
    shipped(DOCKERFILE)
    return root()


def cloudbuild_yaml() -> Path:
    """The Cloud Build definition shared by ``runner build``, the runner image and triggers."""
    return shipped(CLOUDBUILD_YAML)


def startup_scripts() -> tuple[str, str]:
    """The COS VM's startup and shutdown scripts, as text."""
    return shipped("gcp/startup.sh").read_text(), shipped("gcp/shutdown.sh").read_text()

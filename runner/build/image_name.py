"""The name a build gets when the user names none: after its context folder, never an image the
user did not name for this build.

``runner build --local --context myjob`` used to tag the folder as the configured ``image``, which
for the local backend is the workload image that the README tells users to put in ``FROM``: one
build and the base everyone builds on was the user's job (issue 20 §2). The configured ``image``
says what runs use, not where builds go, so a build without ``--image`` is named after its folder
(said by the caller), and a name that would still land on the configured or base image is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.build.image import repo_of

LOCAL_TAG = "dev"  # the tag the README's own examples use for local images (myjob:dev)


class UnnamedBuild(Exception):
    """No safe name can be derived for this build; the message says to pass ``--image``."""


def name_component(folder: str) -> str:
    """``My_Job v2`` → ``my-job-v2``: a valid image path component.

    A component "may contain lowercase letters, digits and separators ... may not start or end
    with a separator" (https://docs.docker.com/engine/reference/commandline/image_tag/); mapping
    every other run of characters to one hyphen always satisfies that, whatever the folder is called.
    """
    return re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")


def image_for_context(context_dir: str, *, local_only: bool, configured_image: str | None,
                      base_image: str | None) -> str:
    """The image a build of ``context_dir`` without ``--image`` is tagged as.

    Local builds: ``FOLDER:dev``. Builds that push: ``FOLDER`` beside the configured image in its
    registry (``…/REPO/trainer`` → ``…/REPO/FOLDER``), since a push needs a registry path and the
    configured one is where the user's repository is. Raises ``UnnamedBuild`` when there is no
    name to derive, or when the derived one is the configured or the base image.
    """
    folder = Path(context_dir).resolve().name
    component = name_component(folder)
    if not component:
        raise UnnamedBuild(f"cannot name an image after the folder {folder!r}: pass --image NAME[:TAG]")
    if local_only:
        ref = f"{component}:{LOCAL_TAG}"
    else:
        if not configured_image or not _names_a_registry(configured_image):
            raise UnnamedBuild("no image name for a build that pushes: pass --image REGISTRY/REPO/NAME[:TAG], "
                               "or set image in runner.toml so that builds go beside it")
        ref = repo_of(configured_image).rsplit("/", 1)[0] + "/" + component
    for what, other in (("the configured image (what runs use)", configured_image),
                        ("the base image (BASE_IMAGE)", base_image)):
        if other and repo_of(other) == repo_of(ref) and (not local_only or _tag_of(other) == LOCAL_TAG):
            raise UnnamedBuild(f"a build of {folder}/ without --image would be tagged {ref}, which is {what}; "
                               "pass --image NAME[:TAG] to name this build")
    return ref


def _names_a_registry(image: str) -> bool:
    """Whether ``image`` starts with a registry host: a first component with a ``.`` or ``:``, or
    ``localhost`` (Docker's rule: "[HOST[:PORT_NUMBER]/]PATH", a bare PATH being Docker Hub's,
    https://docs.docker.com/engine/reference/commandline/image_tag/). A push is never guessed
    into Docker Hub under the configured image's namespace."""
    first, sep, _ = repo_of(image).partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _tag_of(image: str) -> str:
    """``name:tag`` → ``tag``; Docker's implied ``latest`` when there is none."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"

"""``runner build``: parse, build the image by the first route that works, print its pinned reference."""

from __future__ import annotations

import os
from typing import Any

import click

from runner.cli.common import EXIT_FAILED, EXIT_USAGE, config_of, config_options, fail, guard, note


@click.command()
@click.option("--context", "context_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to build; .gcloudignore decides what is uploaded.")
@click.option("--image", help="REPO/NAME[:TAG] to tag (and push). Default: named after the context folder "
                               "(FOLDER:dev with --local; pushed: FOLDER beside image from config), never "
                               "the configured image itself.")
@click.option("--dockerfile", default="Dockerfile", show_default=True)
@click.option("--base-image", help="BASE_IMAGE build arg (default: the Dockerfile's, python:3.11-slim).")
@click.option("--local", "local_only", is_flag=True, help="Build with the local Docker daemon only, no push.")
@click.option("--list-files", is_flag=True, help="Print exactly what would be uploaded, and stop.")
@click.option("--workload", "workload", is_flag=True,
              help="Build the workload image this runner ships (the agent and the examples: the base of "
                   "your job's FROM) instead of a folder; needs --image. Works without a checkout.")
@config_options
@guard
def build(context_dir: str, image: str | None, dockerfile: str, base_image: str | None, local_only: bool,
          list_files: bool, workload: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Build the workload image and print its pinned reference (REPO@sha256:...).

    Routes, each tried when the one before fails, with the reason kept: Cloud Build from the
    staged context; Cloud Build from a re-staged tarball; local `docker buildx --push`.

    \b
      runner build --project my-proj --store gs://my-bucket --image us-docker.pkg.dev/my-proj/runs/trainer
      runner build --local --image cos-spot-runner/workload:dev     # for the local backend
      runner build --local --context myjob                         # tagged myjob:dev, after the folder
      runner build --list-files                                    # what would be uploaded
      runner build --local --workload --image cos-spot-runner/workload:dev   # the shipped workload image
    """
    from runner.build.image import BuildError, BuildRequest, MissingDockerfile, check_context
    from runner.build.build_context import IgnoreFileError

    if workload:
        context_dir = shipped_workload_context(context_dir, image, list_files)
    if list_files:
        print_upload(context_dir)
        return
    cfg = config_of({**cli_config, "base_image": base_image}, config_path)
    req = BuildRequest(context_dir, "", dockerfile)
    try:
        check_context(req)  # before naming the build after a folder that has nothing to build
    except MissingDockerfile as e:
        fail(context_hint(e, context_dir, dockerfile), EXIT_USAGE)
    ref = image or unnamed_build_image(cfg, context_dir, local_only)
    try:
        result = run_build(cfg, BuildRequest(context_dir, ref, dockerfile, cfg.base_image), local_only)
    except (BuildError, IgnoreFileError) as e:
        fail(str(e), EXIT_FAILED)
    click.echo(result.image)


def shipped_workload_context(context_dir: str, image: str | None, list_files: bool) -> str:
    """``--workload``: the workload image's context as this runner ships it (a checkout's root, or
    the installed wheel's copy), for a user who has no checkout. Named only by ``--image``: the
    name users put in ``FROM`` is theirs to choose, never derived (issue 20 §2)."""
    from runner.shipped_files import MissingShippedFile, workload_context

    if context_dir != ".":
        fail("--workload builds the workload image this runner ships; it takes no --context", EXIT_USAGE)
    if not image and not list_files:
        fail("--workload needs --image NAME[:TAG], e.g. --image cos-spot-runner/workload:dev (the name your "
             "job's Dockerfile puts in FROM)", EXIT_USAGE)
    try:
        return str(workload_context())
    except MissingShippedFile as e:
        fail(str(e), EXIT_FAILED)


def context_hint(e: Any, context_dir: str, dockerfile: str) -> str:
    """A missing context or Dockerfile, with the options that point at the right one."""
    hint = f"give the folder that holds your {dockerfile} with --context DIR"
    if e.what != context_dir:  # the folder is there, the file is not: it may be named otherwise
        hint += ", or a file named otherwise with --dockerfile NAME"
    return f"{e}: {hint}"


def print_upload(context_dir: str) -> None:
    """``--list-files``: what would be uploaded, one path a line. Nothing to upload is no answer
    a build can use, so it is said, with why, and exits 1."""
    from runner.build.build_context import IGNORE_FILE_NAME, IgnoreFileError
    from runner.build.image import list_files as files_of

    if not os.path.isdir(context_dir):
        fail(f"no folder {context_dir}: give the folder to build with --context DIR", EXIT_USAGE)
    try:
        paths = files_of(context_dir)
    except IgnoreFileError as e:
        fail(str(e), EXIT_USAGE)
    for path in paths:
        click.echo(path)
    if paths:
        return
    if not os.listdir(context_dir):
        why = "the folder is empty"
    elif os.path.exists(os.path.join(context_dir, IGNORE_FILE_NAME)):
        why = f"its {IGNORE_FILE_NAME} leaves out every file"
    else:
        why = "the default ignore rules (.git, what .gitignore names) leave out every file"
    fail(f"nothing would be uploaded from {os.path.abspath(context_dir)}: {why}; give the folder that holds "
         "your Dockerfile with --context DIR", EXIT_FAILED)


def unnamed_build_image(cfg: Any, context_dir: str, local_only: bool) -> str:
    """The name of a build the user named no image for: after its folder, said on stderr; never
    the configured image (what runs use) nor the base image (issue 20 §2). None derivable: exit 2."""
    from runner.build.image_name import UnnamedBuild, image_for_context

    try:
        ref = image_for_context(context_dir, local_only=local_only, configured_image=cfg.image,
                                base_image=cfg.base_image)
    except UnnamedBuild as e:
        fail(str(e), EXIT_USAGE)
    note(f"no --image: tagging this build {ref}, after its folder (--image NAME to choose)")
    return ref


def run_build(cfg: Any, req: Any, local_only: bool) -> Any:
    """Build ``req`` as Cloud Build's ``build_service_account`` when the config names one (for
    ``runner build`` and for ``runner submit``'s build-first alike)."""
    import dataclasses

    from runner.build.image import build_image

    if req.service_account is None and cfg.build_service_account:
        req = dataclasses.replace(req, service_account=cfg.build_service_account)
    from runner.cloud.gcp_clients import cloudbuild_client

    from entrypoint.store_gcs import parse_gs_url

    store = cfg.store_url
    bucket = parse_gs_url(store)[0] if store.startswith("gs://") else None
    result = build_image(req, local_only=local_only, project=cfg.project, bucket=bucket,
                         client_factory=lambda: cloudbuild_client(cfg.cloudbuild_endpoint), say=note)
    note(f"built {result.image} via {result.route}")
    return result

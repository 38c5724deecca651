"""``runner images bake|list|delete``: warm boot images (runner/build/warm_image.py), parse-call-print."""

from __future__ import annotations

import json
from typing import Any

import click

from runner.cli.common import EXIT_USAGE, config_options, fail, guard, load, note


@click.group()
def images() -> None:
    """Warm boot images: COS with the GPU driver and your pinned image already on the disk.

    \b
    A create boots from the READY warm image of the run's COS image, driver and image digest
    when there is one (warm_images = "auto", the default), and from plain COS otherwise. A
    warm boot skips the driver install and the image pull: ~1 minute instead of ~6 per
    recovery. Each image is billed while it exists: remove those you no longer use.
      runner images bake                       # for the configured image (REPO@sha256:...)
      runner images list
      runner images delete --all-unused
    """


def _context(cli_config: dict[str, Any], config_path: str | None) -> Any:
    ctx = load(cli_config, config_path)
    if ctx.cfg.backend != "gce":
        fail("warm images are GCE boot images: pass --backend gce (or set backend = \"gce\" in runner.toml)",
             EXIT_USAGE)
    return ctx


@images.command()
@click.option("--image", help="REPO@sha256:DIGEST to bake in (default: image from config).")
@click.option("--timeout", "timeout_s", type=float,
              help="Seconds the bake VM may take to install the driver and pull (default: gpu_timeout + 1500).")
@config_options
@guard
def bake(image: str | None, timeout_s: float | None, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Make the warm image of an image (idempotent: an existing READY one is kept).

    A spot VM of the configured shape installs the driver and pulls the image; its boot disk
    becomes the image; the VM is deleted whatever happens. Prints the image's name (stdout) and
    what it costs to keep (stderr).
    """
    from runner.build.warm_image import bake as bake_image

    ctx = _context(cli_config, config_path)
    result = bake_image(ctx, image, timeout_s=timeout_s, say=note)
    note(result.summary())
    click.echo(result.name)


@images.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@config_options
@guard
def list_cmd(as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Every warm image in the project: name, created, size, key, and which the config uses."""
    from runner.build.warm_image import list_images

    found = list_images(_context(cli_config, config_path))
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    if not found:
        note("no warm images (`runner images bake` makes one)")
        return
    click.echo(f"{'NAME':24} {'STATUS':8} {'CREATED':29} {'DISK':>6} {'STORED':>8} {'$/MONTH':>8}  KEY")
    for i in found:
        key = i["key"]
        used = "  (in use by config)" if i["in_use"] else ""
        click.echo(f"{i['name']:24} {i['status']:8} {i['created']:29} {i['disk_size_gb']:>4}GB "
                   f"{i['stored_bytes'] / (1 << 30):>6.1f}Gi {i['monthly_cost']:>8.2f}  "
                   f"cos={key['cos']} driver={key['driver']} digest={key['digest'][:12]}{used}")


@images.command()
@click.argument("names", nargs=-1)
@click.option("--all-unused", is_flag=True, help="Every warm image whose digest is not the configured image's.")
@config_options
@guard
def delete(names: tuple[str, ...], all_unused: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Delete warm images by NAME, or --all-unused. Runs that booted from them are not affected."""
    from runner.build.warm_image import delete_images

    if bool(names) == all_unused:
        fail("name the images to delete (runner images delete NAME...), or pass --all-unused", EXIT_USAGE)
    gone = delete_images(_context(cli_config, config_path), list(names), all_unused)
    for name in gone:
        click.echo(name)
    note(f"deleted {len(gone)} warm image(s)" if gone else "no unused warm images")


__all__ = ["images"]

"""The one top-level name the installed runner adds to an environment (issue 20 §16).

The repository's packages (``runner``, ``entrypoint``, ``examples``, ``gcp``) keep their names:
the workload and runner images copy them byte for byte and run them as top-level packages
there. Installed as top-level names they would collide with a user's own ``runner`` or
``examples``, so the wheel puts them, unchanged, in ``cos_spot_runner/_lib/`` (setup.py maps
them at packaging time), beside the files the commands build from (``Dockerfile``,
``cloudbuild.yaml``: ``runner/shipped_files.py``). Only the ``runner`` command and
``python -m cos_spot_runner`` put that folder on ``sys.path``; importing anything else in the
user's Python sees none of it. In a checkout (or an editable install) there is no ``_lib``: the
packages are the repository's own folders, beside this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRIVATE_FOLDER = "_lib"  # setup.py's name for it too


def code_root() -> Path:
    """The folder holding ``runner/``, ``entrypoint/``, ``gcp/``, ``examples/``: ``_lib`` in an
    installed wheel, else the checkout this package sits in."""
    here = Path(__file__).resolve().parent
    private = here / PRIVATE_FOLDER
    return private if private.is_dir() else here.parent


def use_own_packages() -> None:
    """Put ``code_root()`` FIRST on ``sys.path``: a ``runner`` or ``examples`` in the user's working
    directory (``python -m`` puts it first) or on ``PYTHONPATH`` must not shadow ours.

    A different ``runner`` already imported in this process would be used instead of ours by every
    later import, so that is refused with what to do, rather than run someone else's code."""
    root = str(code_root())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    loaded = sys.modules.get("runner")
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if loaded is not None and (origin is None or not Path(origin).resolve().is_relative_to(Path(root))):
        raise SystemExit(f"another package named runner ({origin or loaded!r}) is already imported in this "
                         "process; run the `runner` command (or python -m cos_spot_runner) in a process of its own")


def main() -> None:
    """The ``runner`` command: this runner's CLI, whatever else the environment calls ``runner``."""
    use_own_packages()
    from runner.cli.main import main as cli_main

    cli_main()

"""What every ``runner`` command shares: the config flags, loading config/store/backend, and
turning the product's own errors into one-line messages with the right exit code.

Exit codes: 0 ok, 1 the run failed (or an operation failed), 2 usage or config error, 3 not found;
141 when the reader of stdout left early (`| head`, see closed_pipe).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


def fail(msg: str, code: int) -> None:
    click.echo(f"runner: {msg}", err=True)
    sys.exit(code)


def note(msg: str) -> None:
    click.echo(msg, err=True)


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--config/--store/--backend, shared by every command that touches runs."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="runner.toml to use (default: found by walking up from the current directory).")
    @click.option("--store", help="Where run records live: gs://BUCKET[/PREFIX] or file:///DIR.")
    @click.option("--backend", type=click.Choice(["local", "gce"]),
                  help="Where runs execute (default from config: local).")
    @click.option("--project", help="GCE: the project (always explicit; gcloud's active project is never assumed).")
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, store: str | None, backend: str | None,
                project: str | None, **kw: Any) -> Any:
        return f(*args, cli_config={"store": store, "backend": backend, "project": project},
                 config_path=config_path, **kw)

    return wrapper


def config_of(cli_config: dict[str, Any], config_path: str | None, task: Any = None):  # type: ignore[no-untyped-def]
    """The layered config with these flags on top (None = not given); a bad one exits 2.
    ``task``: a task file's settings layer and its folder (``load_config``'s ``task``)."""
    from runner.config import ConfigError, load_config

    try:
        return load_config(cli={k: v for k, v in cli_config.items() if v is not None}, config_path=config_path,
                           task=task)
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)


def load(cli_config: dict[str, Any], config_path: str | None, create_store: bool = False,  # type: ignore[no-untyped-def]
         task: Any = None):
    """Config, store and backend; every user error becomes a one-line message and exit 2/1."""
    from entrypoint.store import StoreError
    from runner.launch.backends.base import BackendError
    from runner.launch.context import make_context

    cfg = config_of(cli_config, config_path, task)
    try:
        return make_context(cfg, create_default_store=create_store)
    except StoreError as e:
        fail(str(e), EXIT_USAGE)
    except BackendError as e:
        fail(str(e), EXIT_FAILED)


def guard(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the product's own exceptions into one-line errors with the right exit code.

    Nothing gets past as a traceback: a damaged record object is named with what to do, and
    anything else is an internal error, said in one line with what to report
    (``RUNNER_DEBUG=1`` shows the traceback too).
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        from entrypoint.record import DamagedRecord
        from entrypoint.store import StoreError
        from runner.launch.backends.base import BackendError
        from runner.naming import InvalidRunId
        from runner.ops.runs import RunNotFound
        from runner.launch.submit import SubmitRefused

        try:
            return f(*args, **kw)
        except InvalidRunId as e:
            fail(str(e), EXIT_USAGE)
        except SubmitRefused as e:
            fail(str(e), EXIT_USAGE)
        except RunNotFound as e:
            fail(str(e), EXIT_NOT_FOUND)
        except DamagedRecord as e:
            fail(damaged_message(e), EXIT_FAILED)
        except (BackendError, StoreError) as e:
            fail(str(e), EXIT_FAILED)
        except BrokenPipeError:
            raise  # the reader of stdout left (`| head`): QuietOnClosedPipe ends quietly
        except OSError as e:
            # A file we write refused us (a read-only or full store, no permission): one line,
            # not a traceback. Other OSErrors (network, pipes) are said as they are.
            import errno

            where = f" ({e.filename})" if e.filename else ""
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                fail(f"{e.strerror}{where}: this command writes to the store; make it writable "
                     "(or free space), or use a read-only command (ops status/list/logs)", EXIT_FAILED)
            fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors, --help, Ctrl-C at a prompt
        except Exception as e:  # noqa: BLE001 - the catch-all: a bug of ours, never a traceback
            if _retry_exhausted(e):
                # A Google API kept answering 429/5xx past the retry deadline: not our bug, and
                # no code path in between need know about it to be said right.
                fail(f"a Google API call kept failing until its retries ran out ({getattr(e, 'message', e)}); "
                     "try again later (https://status.cloud.google.com shows Google Cloud incidents)",
                     EXIT_FAILED)
            fail(internal_error_message(e), EXIT_FAILED)

    return wrapper


def _retry_exhausted(e: BaseException) -> bool:
    """A ``google.api_core`` ``RetryError``: a fault sustained past ``api_retry``'s deadline,
    which is not a ``GoogleAPICallError`` and so escapes every handler written for those."""
    from google.api_core.exceptions import RetryError

    return isinstance(e, RetryError)


def damaged_message(e: Any) -> str:
    """What a user reads for a ``DamagedRecord``: the object, what is wrong, what still works."""
    run = e.name.split("/")[1] if e.name.startswith("runs/") and e.name.count("/") >= 2 else None
    stop = f"; `runner ops delete --run-id {run}` still stops the run" if run else ""
    return (f"cannot read {e.name}: {e.why}. The object is damaged (a cut-off write, or an edit by "
            f"hand); restore it from a copy, or remove the run's record once it is stopped{stop}")


def internal_error_message(e: BaseException) -> str:
    """The catch-all's one line: what happened, and what to report. With ``RUNNER_DEBUG=1``
    the traceback goes to stderr first."""
    import os
    import traceback

    if os.environ.get("RUNNER_DEBUG"):
        traceback.print_exception(e)
    how = "" if os.environ.get("RUNNER_DEBUG") else "; RUNNER_DEBUG=1 shows the traceback"
    return (f"internal error ({type(e).__name__}: {e}); please report it with this message "
            f"(cos-spot-runner {_version()}){how}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cos-spot-runner")
    except PackageNotFoundError:
        return "(version unknown: not installed)"


def checked_run_id(value: str) -> str:
    from runner.naming import validate_run_id

    return validate_run_id(value)

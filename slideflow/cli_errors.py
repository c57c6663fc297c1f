"""Running the typer app so that a user's mistake is one `error:` line, never a traceback.

typer >= 0.20 carries its own copy of click (`typer._click`): its usage errors are not
`click.ClickException`, so the exception classes are taken from typer itself
(`typer.BadParameter`'s bases), which works whichever click typer uses.

Exit status: 0 done; 1 when the command failed (e.g. a slide failed); 2 for a usage error
(unknown option or command, bad value, missing argument, no command at all) or a run that
cannot start (a `SlideflowError` that is a `ValueError`, or a slide that does not exist).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer


def _base(name: str) -> type[BaseException]:
    """The class `name` among typer.BadParameter's bases (click's, or typer's own copy)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


USAGE_ERROR = _base("UsageError")
CLICK_EXCEPTION = _base("ClickException")


def check_inputs_exist(paths: list | None) -> None:
    """Slides and folders named on the command line must exist (URLs are checked when read):
    checked before any model is built (a typo used to cost the model's load time)."""
    from .io.location import is_url

    missing = [str(p) for p in paths or [] if not is_url(p) and not Path(p).exists()]
    if missing:
        raise typer.BadParameter(f"no such slide file or folder: {', '.join(missing)}")


def show_usage_error(exc: Any) -> None:
    """Click's short usage and help hint, then one `error: ...` line (all on stderr)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        typer.echo(ctx.get_help())  # bare `slideflow`: the help itself
        return
    if ctx is not None:
        typer.echo(ctx.get_usage(), err=True)
        if ctx.command.get_help_option(ctx) is not None:
            typer.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.",
                       err=True)
    message = exc.format_message()
    if (isinstance(exc, typer.BadParameter) and exc.param is None
            and exc.param_hint is None):  # raised by a command: its own words, no prefix
        message = exc.message
    typer.echo(f"error: {message}", err=True)


def run_app(app: typer.Typer, args: list[str], prog_name: str) -> int:
    """Run `app` on `args` without click's standalone mode; return the exit status."""
    from .errors import SlideflowError

    try:
        # without standalone mode a command's typer.Exit code comes back as the return value
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except USAGE_ERROR as exc:
        show_usage_error(exc)
        return 2
    except CLICK_EXCEPTION as exc:  # e.g. a file option that cannot be opened
        typer.echo(f"error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("Aborted.", err=True)
        return 130
    except SlideflowError as exc:  # a clear message, never a traceback
        typer.echo(f"error: {exc}", err=True)
        return 2 if isinstance(exc, (ValueError, FileNotFoundError)) else 1
    finally:
        sys.stdout.flush()
    return code if isinstance(code, int) else 0

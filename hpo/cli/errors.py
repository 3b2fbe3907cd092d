"""One line and exit status 2 for every input error; the library's field names become flags here."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, final

import click

from hpo.errors import CompareInterrupted, ConfigError, Interrupted, RunError
from hpo.runtime.distributed import RankError


def flag_of(group: click.Group, field: str) -> str | None:
    """The flag (or argument) of any command of ``group`` whose parameter is called ``field``."""
    dashed = "--" + field.replace("_", "-")
    for command in group.commands.values():
        for param in command.params:
            if param.name == field or dashed in param.opts:
                return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    return None


def data_parallel_launch() -> bool:
    """Whether this process was launched by ``torchrun`` with several processes (``WORLD_SIZE`` above 1)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def follower_rank() -> bool:
    """Whether this process is a rank other than 0 of a ``torchrun`` launch with several processes."""
    return data_parallel_launch() and os.environ.get("RANK", "0") not in ("", "0")


@final
class OneLineErrors(click.Group):
    """A click group whose errors are a single ``Error: ...`` line: exit 2 for bad input, 1 otherwise."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        """Run the command; turn usage and configuration errors into one line and exit 2."""
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except ConfigError as e:
            if follower_rank():  # every rank meets a configuration error alike: rank 0 says it once
                sys.exit(2)
            flag = flag_of(self, e.field)
            where = f"Invalid value for '{flag}': " if flag else f"{e.field}: "
            click.echo(f"Error: {where}{e.message}", err=True)
            sys.exit(2)
        except CompareInterrupted as e:
            click.echo(f"Interrupted after {e.done} finished (seed, method) pairs; continue with: "
                       f"hpo compare --resume {e.logdir}", err=True)
            sys.exit(130)
        except Interrupted as e:
            click.echo(f"Interrupted after {e.done} completed outer steps; continue with: "
                       f"hpo run --resume {e.logdir}", err=True)
            sys.exit(130)
        except RankError as e:  # one rank's own trouble in a data-parallel run: each says its own line
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except RunError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

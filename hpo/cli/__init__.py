"""The ``hpo`` command line: the only layer that imports click.

It turns options into a configuration of :mod:`hpo.app.config` and calls the application layer
(:mod:`hpo.app`); every input error is one line on stderr and exit status 2.
"""

from hpo.cli.main import cli, main

__all__ = ["cli", "main"]

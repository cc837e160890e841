"""One error base for the platform, and the one place that turns it into a command-line error.

Each side derives its own base (`PlatformError`, `BenchmarkError`, `SpecError`, ...) from
`AIFError`; every message names the field, file or setting that was wrong and what was expected,
so the CLI prints it as it is, one line, exit status 1, no traceback.
"""

import functools

import click


class AIFError(Exception):
    """A problem the user or operator can fix; the message says what and how."""


def cli_errors(command):
    """Decorate a click command: an AIFError becomes a one-line `Error: ...` and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AIFError as err:
            raise click.ClickException(str(err)) from None

    return wrapper

"""Options every `aif` command group shares, defined once."""

from pathlib import Path

import click

PLATFORM_STATE_HELP = ("Directory holding all platform state (default: $AIF_STATE_DIR, else "
                       "~/.local/share/aifactory-lab).")


def state_dir_option(default=None, help=PLATFORM_STATE_HELP):
    """`--state-dir DIR` as a Path; without `default`, None (the command picks the platform's)."""
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=default,
                        show_default=default is not None, help=help)

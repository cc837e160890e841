"""`aif config generate`: the example config file, written from the code's own documentation.

Like JupyterHub's `--generate-config`: each setting the platform defines is listed with its
trait's `help=` and default, class by class; a fixed header and a trailer of site examples (PAM,
OAuth, PostgreSQL: values, not defaults) come from templates/aif_config.example.py.j2. The
committed hub/config/aif_config.example.py is this output (a test keeps them equal): change a
trait's help, then run `aif config generate -o hub/config/aif_config.example.py`.
"""

import pprint
import textwrap
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from traitlets import TraitType

WIDTH = 96
TEMPLATE = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                       keep_trailing_newline=True).get_template("aif_config.example.py.j2")


def documented_classes():
    """The classes whose settings the example lists, in the order a reader meets them."""
    from ..auth import AIFLocalAuthenticator
    from ..oidc import AIFOIDCAuthenticator
    from ..spawner.env import PlatformEnvMixin
    from ..spawner.slurm import AIFSlurmSpawner
    from .config import AIFPlatform, MLflowService, ServeService

    return [AIFPlatform, MLflowService, ServeService, AIFLocalAuthenticator, AIFOIDCAuthenticator, PlatformEnvMixin, AIFSlurmSpawner]


def example_config():
    """The whole example file as text."""
    return TEMPLATE.render(sections=[class_section(cls) for cls in documented_classes()])


def class_section(cls):
    """The commented settings a class defines itself (inherited ones belong to their own docs)."""
    bases = ", ".join(base.__name__ for base in cls.__bases__)
    rule = "#" + "-" * (WIDTH - 1)
    lines = [rule, f"# {cls.__name__}({bases}) configuration", rule]
    lines += _comment(cls.__doc__ or "", "## ", "#  ")
    for name, trait in sorted(cls.class_own_traits(config=True).items()):
        lines += [""] + _comment(trait.help, "## ", "#  ")
        lines += _default_lines(cls, name, trait)
    return "\n".join(lines)


def _default_lines(cls, name, trait: TraitType):
    """`Default:` and the commented assignment; a computed (@default) value is not evaluated here."""
    setting = f"c.{cls.__name__}.{name} = "
    if cls._all_trait_default_generators.get(name) != trait.default:
        return ["#  Default: computed when the platform starts (see above)", f"# {setting}..."]
    value = trait.default()
    if isinstance(value, str) and "\n" in value:  # a template (batch_script): its help names the file
        return ["#  Default: the file named above", f"# {setting}..."]
    text = pprint.pformat(value, width=WIDTH - 8, sort_dicts=False)
    first, *rest = text.splitlines()
    pad = " " * len(setting)
    return ([f"#  Default: {first if not rest else 'as below'}", f"# {setting}{first}"]
            + [f"# {pad}{line}" for line in rest])


def _comment(text, first, other):
    """Help text as comment lines: paragraphs re-flowed, whatever its source indentation."""
    paragraphs = [" ".join(p.split()) for p in textwrap.dedent(text).strip().split("\n\n") if p.strip()]
    lines = []
    for index, paragraph in enumerate(paragraphs):
        if index:
            lines.append(other.rstrip())
        lines += textwrap.wrap(paragraph, WIDTH, initial_indent=first if index == 0 else other,
                               subsequent_indent=other, break_on_hyphens=False, break_long_words=False)
    return lines

"""Local Unix accounts for people whose sessions run as Slurm jobs (mini-cluster, workshop seats).

Jobs run as the user (`runuser -u NAME`), so every hub user who spawns needs an account on the
nodes, and a hub user name must be a valid Unix name (`check_name`, used by the users file too).
A site with a directory service (LDAP, IdM) provisions the accounts there instead.
"""

import grp
import pwd
import re
import subprocess

from ..common.errors import AIFError

#: a portable Unix user or group name (useradd's default rule), at most 32 characters
NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class AccountError(AIFError):
    """An account name was refused or a Unix account could not be made; the message says which and why."""


def check_name(name, what="user name"):
    """Refuse a name that cannot be a Unix account or group, naming the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AccountError(f"{what} {name!r} is invalid: use lower-case letters, digits, '-' and '_', "
                           "starting with a letter or '_', at most 32 characters")
    return name


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AccountError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")


def ensure_unix_user(name, groups=()):
    """A Unix user with a home directory (idempotent), in the given Unix groups."""
    check_name(name)
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    for group in groups:
        check_name(group, "group name")
        try:
            grp.getgrnam(group)
        except KeyError:
            _run(["groupadd", group])
        _run(["usermod", "--append", "--groups", group, name])
    return pwd.getpwnam(name)


def remove_unix_user(name):
    """Delete a Unix user with its home directory; nothing to do if it does not exist."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, timeout=60)

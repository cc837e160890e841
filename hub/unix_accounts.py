"""Local Unix accounts of hub users: sessions run as them (local spawner as root, Slurm jobs).

Jobs run as the user (`runuser -u NAME`), so every hub user who spawns needs an account on the
nodes, and a hub user name must be a valid Unix name (`check_name`, used by the users file too).
Users are companies' staff who must not read each other's files: every home made here is 0700
from the start. A site with a directory service (LDAP, IdM) provisions the accounts and sets
the homes' modes there instead.
"""

import grp
import pwd
import re
import subprocess

from ..common.errors import AIFError

#: a portable Unix user or group name (useradd's default rule), at most 32 characters
NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: homes are made private at creation (useradd's HOME_MODE), not tightened afterwards
HOME_MODE = "0700"


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
    """A Unix user with a private (0700) home directory (idempotent), in the given Unix groups.

    An existing account is used as it is (a site's own policy for its homes stays), but never
    one with uid 0: a session must not run as root.
    """
    check_name(name)
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--create-home", "--key", f"HOME_MODE={HOME_MODE}", "--shell", "/bin/bash", name])
    for group in groups:
        ensure_unix_group(group)
        _run(["usermod", "--append", "--groups", group, name])
    account = pwd.getpwnam(name)
    if account.pw_uid == 0:
        raise AccountError(f"user {name!r} is the Unix superuser (uid 0): no session may run as root")
    return account


def ensure_unix_group(name):
    """A Unix group (idempotent); its entry."""
    check_name(name, "group name")
    try:
        return grp.getgrnam(name)
    except KeyError:
        _run(["groupadd", name])
        return grp.getgrnam(name)


def remove_unix_group(name):
    """Delete a Unix group; nothing to do if it does not exist."""
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    subprocess.run(["groupdel", name], capture_output=True, timeout=60)


def remove_unix_user(name):
    """Delete a Unix user with its home directory; nothing to do if it does not exist."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, timeout=60)

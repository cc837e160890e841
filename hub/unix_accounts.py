"""Local Unix accounts for people whose sessions run as Slurm jobs (mini-cluster, workshop seats).

Jobs run as the user (`runuser -u NAME`), so every hub user who spawns needs an account on the
nodes. A site with a directory service (LDAP, IdM) provisions them there instead.
"""

import grp
import pwd
import re
import subprocess

USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class AccountError(RuntimeError):
    """A Unix account could not be made; the message says which and why."""


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AccountError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")


def ensure_unix_user(name, groups=()):
    """A Unix user with a home directory (idempotent), in the given Unix groups."""
    if not USERNAME_RE.match(name):
        raise AccountError(f"user name {name!r}: expected lowercase letters, digits, '_' or '-'")
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    for group in groups:
        if not USERNAME_RE.match(group):
            raise AccountError(f"group name {group!r}: expected lowercase letters, digits, '_' or '-'")
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

"""A company's project space: `aif project create acme --members alice,bob`, then
`aif project add acme carol`, `aif project remove acme bob`, `aif project list`.

What it makes, all or nothing:
- a Unix group `acme` with the members in it (a session sees it from its next start);
- `<projects_root>/acme`, owned by root:acme, mode 2770 (setgid: what members create stays in the
  group), with a default ACL u::rwx g::rwx o::--- so that files made there are the group's
  although sessions run with umask 077 (a default ACL replaces the umask);
- a hub group `acme` with the same members and the property `aif_project` (its path): MLflow
  shares with that group (the existing share mechanism) reach exactly the same people;
- `~/projects/acme`, a link in each member's home, which JupyterLab shows.
Nobody else can list the directory. Adding a member makes the same three things for them (group,
hub group, link); removing one takes them away again. A session keeps the Unix groups it started
with, so a removed member's running session keeps access until it stops: `remove` names those
sessions, and `--stop-sessions` stops them.
"""

import grp
import os
import pwd
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

from ...common.errors import AIFError
from ..unix_accounts import AccountError, NAME_RE, check_name, ensure_unix_user

PROJECT_PROPERTY = "aif_project"
SPACE_MODE = 0o2770

# the kernel's xattr form of a POSIX ACL (linux/posix_acl_xattr.h): a version, then (tag, perm, id)
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER = 0x01, 0x04, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
DEFAULT_ACL = struct.pack("<I", _ACL_VERSION) + b"".join(
    struct.pack("<HHI", tag, perm, _ACL_UNDEFINED_ID)
    for tag, perm in ((_ACL_USER_OBJ, 7), (_ACL_GROUP_OBJ, 7), (_ACL_OTHER, 0))
)


class ProjectError(AIFError):
    """A project could not be made; the message names what was wrong."""


def check_project_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ProjectError(f"project name {name!r} is not a valid Unix group name: use lower-case letters, digits, "
                           "'-' and '_', starting with a letter or '_', at most 32 characters")
    try:
        grp.getgrnam(name)
    except KeyError:
        return name
    raise ProjectError(f"project name {name!r}: a Unix group of that name already exists; choose another name")


def check_projects_root(root):
    """`root` holds setgid directories with default ACLs (tried on a probe directory), else ProjectError."""
    root = Path(root)
    if not root.is_dir():
        raise ProjectError(f"projects root {root}: no such directory; create it or set AIFPlatform.projects_root")
    probe = Path(tempfile.mkdtemp(prefix=".aif-probe-", dir=root))
    try:
        os.chmod(probe, SPACE_MODE)
        if not os.stat(probe).st_mode & stat.S_ISGID:
            raise ProjectError(f"projects root {root}: its filesystem cannot hold setgid directories; "
                               "choose a local or POSIX filesystem")
        try:
            os.setxattr(probe, "system.posix_acl_default", DEFAULT_ACL)
        except OSError as err:
            raise ProjectError(f"projects root {root}: its filesystem cannot hold default ACLs ({err.strerror}), "
                               "which make members' files the group's; mount it with ACL support") from None
    finally:
        probe.rmdir()
    return root


def check_members(platform, members, flag="--members"):
    """Sorted, deduplicated hub users; each a valid account name and known to the hub."""
    members = sorted({m.strip() for m in members if m.strip()})
    if not members:
        raise ProjectError(f"{flag}: name at least one hub user")
    for member in members:
        try:
            check_name(member, "member")
        except AccountError as err:
            raise ProjectError(f"{flag}: {err}") from None
        if platform.api("GET", f"/users/{member}").status_code != 200:
            raise ProjectError(f"{flag}: no hub user {member!r}; create it first (aif user add {member})")
    return members


class ProjectMaker:
    """Makes one project space on a running platform, undoing every step if a later one fails."""

    def __init__(self, platform, root):
        self.platform = platform
        self.root = Path(root)
        self.undo = []

    def create(self, name, members):
        check_project_name(name)
        members = check_members(self.platform, members)
        check_projects_root(self.root)
        try:
            gid = self._unix_group(name, members)
            path = self._space(name, gid)
            self._hub_group(name, members, path)
            for member in members:
                self._link(member, name, path)
        except BaseException:
            for step in reversed(self.undo):
                step()
            raise
        return path

    def _unix_group(self, name, members):
        subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=60)
        self.undo.append(lambda: subprocess.run(["groupdel", name], capture_output=True, timeout=60))
        for member in members:
            ensure_unix_user(member, groups=[name])  # sessions run as it: made here if not yet
        return grp.getgrnam(name).gr_gid

    def _space(self, name, gid):
        path = self.root / name
        path.mkdir(mode=0o700)  # nobody's but root's until it is the group's
        self.undo.append(lambda: _remove_tree(path))
        os.chown(path, 0, gid)
        os.chmod(path, SPACE_MODE)
        os.setxattr(path, "system.posix_acl_default", DEFAULT_ACL)
        return path

    def _hub_group(self, name, members, path):
        api = self.platform.api
        created = api("POST", f"/groups/{name}")
        if created.status_code == 409:
            raise ProjectError(f"project name {name!r}: a hub group of that name already exists")
        created.raise_for_status()
        self.undo.append(lambda: api("DELETE", f"/groups/{name}"))
        api("PUT", f"/groups/{name}/properties", json={PROJECT_PROPERTY: str(path)}).raise_for_status()
        api("POST", f"/groups/{name}/users", json={"users": members}).raise_for_status()

    def _link(self, member, name, path):
        self.undo.append(link_space(member, name, path))


def link_space(member, name, path):
    """~member/projects/NAME -> the space (the folder made if needed); returns how to undo it."""
    account = pwd.getpwnam(member)
    folder = Path(account.pw_dir) / "projects"
    made_folder = not folder.exists()
    if made_folder:
        folder.mkdir(mode=0o700)
        os.chown(folder, account.pw_uid, account.pw_gid)
    link = folder / name
    link.symlink_to(path)
    os.lchown(link, account.pw_uid, account.pw_gid)

    def undo():
        link.unlink(missing_ok=True)
        if made_folder:
            _remove_tree(folder)
    return undo


def unlink_space(member, name):
    link = Path(pwd.getpwnam(member).pw_dir) / "projects" / name
    if link.is_symlink():
        link.unlink()


class Projects:
    """The platform's existing projects: list them, add and remove members (all or nothing)."""

    def __init__(self, platform):
        self.platform = platform

    def all(self):
        """[(name, path, members)] of every hub group marked as a project."""
        groups = self.platform.api("GET", "/groups").json()
        groups = groups.get("items", groups) if isinstance(groups, dict) else groups
        return sorted((g["name"], g["properties"][PROJECT_PROPERTY], sorted(g["users"]))
                      for g in groups if PROJECT_PROPERTY in (g.get("properties") or {}))

    def get(self, name):
        """(path, members) of project NAME, else ProjectError."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ProjectError(f"project name {name!r} is not a valid Unix group name")
        found = self.platform.api("GET", f"/groups/{name}")
        group = found.json() if found.status_code == 200 else {}
        if PROJECT_PROPERTY not in (group.get("properties") or {}):
            raise ProjectError(f"no project {name!r} (see `aif project list`)")
        return Path(group["properties"][PROJECT_PROPERTY]), sorted(group["users"])

    def add(self, name, users):
        path, members = self.get(name)
        users = check_members(self.platform, users, "users")
        already = sorted(set(users) & set(members))
        if already:
            raise ProjectError(f"{', '.join(already)}: already a member of {name}")
        undo = []
        try:
            for user in users:
                ensure_unix_user(user, groups=[name])  # an account made here stays: it is the user's
                undo.append(lambda user=user: _leave_unix_group(user, name))
                undo.append(link_space(user, name, path))
            self.platform.api("POST", f"/groups/{name}/users", json={"users": users}).raise_for_status()
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        return path

    def remove(self, name, users, stop_sessions=False):
        """Take users out of project NAME; returns those whose running sessions keep access (none if stopped)."""
        path, members = self.get(name)
        users = sorted({u.strip() for u in users if u.strip()})
        strangers = sorted(set(users) - set(members))
        if not users or strangers:
            raise ProjectError(f"users: {', '.join(strangers) or '(none)'}: not a member of {name} "
                               f"(members: {', '.join(members)})")
        api = self.platform.api
        api("DELETE", f"/groups/{name}/users", json={"users": users}).raise_for_status()
        for user in users:
            _leave_unix_group(user, name)
            unlink_space(user, name)
        running = [u for u in users if api("GET", f"/users/{u}").json().get("server")]
        if stop_sessions:
            for user in running:
                api("DELETE", f"/users/{user}/server")
            return []
        return running


def _leave_unix_group(user, group):
    subprocess.run(["gpasswd", "--delete", user, group], capture_output=True, timeout=60)


def _remove_tree(path):
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, timeout=60)

"""The local authenticator: accounts in a password file under the state directory.

The embedded default needs no site services (a site configures PAM or OAuth instead). Passwords
are stored as scrypt hashes; accounts may carry groups (synced into the hub on login) and an
expiry (workshop seats).
"""

import datetime
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from jupyterhub.auth import Authenticator
from traitlets import Unicode, default

from ..common.envvars import STATE_DIR
from ..common.files import replace_private
from .unix_accounts import AccountError, check_name

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password, salt=None):
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password, stored):
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except (AttributeError, ValueError):
        return False
    if scheme != "scrypt":
        return False
    candidate = hash_password(password, bytes.fromhex(salt_hex)).split("$")[2]
    return hmac.compare_digest(candidate, digest_hex)


def generate_password():
    return secrets.token_urlsafe(18)


class UsersFile:
    """A JSON file of accounts, changed atomically under an exclusive lock."""

    def __init__(self, path):
        self.path = Path(path)

    def read(self):
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    @contextmanager
    def editing(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = self.read()
            yield users
            # e.g. on a full disk the users file stays as it was
            replace_private(self.path, json.dumps(users, indent=1, sort_keys=True))

    def add(self, name, password=None, admin=False, groups=(), expires=None, replace=False):
        """Create (or with replace=True, reset) an account; returns its password."""
        check_name(name)  # sessions run as the Unix account of the same name
        password = password or generate_password()
        with self.editing() as users:
            if name in users and not replace:
                raise AccountError(f"user {name!r} already exists")
            users[name] = {
                "password": hash_password(password),
                "admin": bool(admin),
                "groups": sorted(set(groups)),
                "expires": expires.isoformat() if expires else None,
            }
        return password

    def remove(self, name):
        with self.editing() as users:
            return users.pop(name, None) is not None

    def check(self, name, password):
        """The account record when name and password match and it has not expired."""
        record = self.read().get(name)
        if not record or not verify_password(password, record.get("password")):
            return None
        expires = record.get("expires")
        if expires and datetime.datetime.fromisoformat(expires) <= datetime.datetime.now(datetime.timezone.utc):
            return None
        return record


class AIFLocalAuthenticator(Authenticator):
    """Log in with an account from the platform's users file (`aif user add`)."""

    users_file = Unicode(
        help="Path of the users file written by `aif user add`. Default: <state_dir>/users.json.",
    ).tag(config=True)

    @default("users_file")
    def _default_users_file(self):
        return os.path.join(STATE_DIR.get("."), "users.json")

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # every account in the file may log in; the file is the allow list
        return True

    async def authenticate(self, handler, data):
        name = self.normalize_username(data.get("username", ""))
        record = UsersFile(self.users_file).check(name, data.get("password", ""))
        if record is None:
            self.log.warning("Failed login for %s", name or "<empty>")
            return None
        return {"name": name, "admin": record.get("admin", False), "groups": record.get("groups", [])}

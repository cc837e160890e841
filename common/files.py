"""Files only their owner may read: secrets, passwords, seat lists, runtime.json (mode 0600),
and the directories that hold them (0700), each created that way rather than tightened later."""

import os
import secrets
from pathlib import Path

#: umask of the platform's own processes (hub, proxy, MLflow): what they create is theirs alone
PRIVATE_UMASK = 0o077


def write_private(path, text, exclusive=False):
    """Write `text` to `path` with mode 0600, also when the file existed with looser bits.

    `exclusive`: fail (FileExistsError) rather than overwrite, for a file made exactly once.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def replace_private(path, text):
    """Write `text` to a 0600 temporary file next to `path`, then rename it over `path`: readers
    see the old or the new content, never half of it; on failure `path` stays as it was."""
    tmp = f"{path}.tmp"
    try:
        write_private(tmp, text)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def secret_file(path, nbytes=32):
    """The secret kept in `path` (hex, 0600), made on first use."""
    try:
        write_private(path, secrets.token_hex(nbytes), exclusive=True)
    except FileExistsError:
        pass
    with open(path) as f:
        return f.read().strip()


def private_dir(path):
    """`path` and its missing parents, each made with mode 0700 (mkdir's mode, never a chmod
    afterwards, so there is no moment at which another account could open it)."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return path if not missing else missing[0]


def open_private_log(path):
    """`path` opened for appending (binary), created 0600."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def private_process():
    """preexec_fn: the child creates 0600 files and 0700 directories."""
    os.umask(PRIVATE_UMASK)

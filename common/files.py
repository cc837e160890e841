"""Files only their owner may read: secrets, passwords, seat lists, runtime.json (mode 0600)."""

import os
import secrets


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

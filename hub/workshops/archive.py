"""What a participant keeps: one archive of their home when the workshop ends."""

import os
import pwd
import re
import tarfile
from pathlib import Path

# what a participant's archive leaves out: caches and the platform's own job logs
ARCHIVE_SKIP = re.compile(r"^(\.cache|\.local/share/jupyter/runtime|\.ipython/profile_default/history\.sqlite"
                          r"|\.aif-slurm-\d+\.log)(/|$)")


def archive_home(login, archive_root):
    """<archive_root>/<login>.tar.gz of the participant's home (caches left out); None if no home."""
    try:
        home = Path(pwd.getpwnam(login).pw_dir)
    except KeyError:
        return None
    if not home.is_dir():
        return None
    archive_root.mkdir(parents=True, exist_ok=True)
    target = archive_root / f"{login}.tar.gz"
    partial = target.with_suffix(".partial")

    def keep(info):
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        return None if rel and ARCHIVE_SKIP.match(rel) else info

    with tarfile.open(partial, "w:gz") as tar:
        tar.add(home, arcname=login, filter=keep)
    os.replace(partial, target)  # never a half-written archive under the final name
    return target

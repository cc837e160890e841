"""Disk full in the state directory: the platform (local spawner) on a small tmpfs, filled up."""

import errno
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from aifactory.common.net import free_port
from aifactory.hub.platform import Platform
from aifactory.hub.testing.ci import require_root
from mlflow.entities import Metric
from test_2_mlflow import store_as

AIF = os.path.join(os.path.dirname(sys.executable), "aif")
SIZE = "96m"
USER = "aifdisk"


@pytest.fixture
def small_state_dir():
    require_root()
    mount_point = Path(tempfile.mkdtemp(prefix="aif-faults-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(directory):
    """Write until the filesystem refuses (ENOSPC); returns the filler's path."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    return filler


def log_one_run(platform, token, name):
    """An experiment, a run and three metric points as the MLflow client sends them."""
    store = store_as(platform, token)
    experiment = store.get_experiment_by_name(f"{USER}/{name}")
    experiment_id = experiment.experiment_id if experiment else store.create_experiment(f"{USER}/{name}")
    run = store.create_run(experiment_id, USER, int(time.time() * 1000), [], name)
    store.log_batch(run.info.run_id, [Metric("loss", 1.0 / (i + 1), int(time.time() * 1000), i) for i in range(3)], [], [])
    return store, run.info.run_id


def integrity(state):
    """PRAGMA integrity_check of every SQLite database under the state directory."""
    results = {}
    for path in sorted(state.rglob("*.sqlite")):
        with sqlite3.connect(path) as db:
            results[str(path.relative_to(state))] = db.execute("PRAGMA integrity_check").fetchone()[0]
    return results


def user_message(text):
    return " ".join(text.split())[:300]


def clear(message):
    return bool(message) and "Traceback" not in message and len(message) < 600


def try_login(platform, password):
    """(HTTP status of the login POST, what the person sees) through the hub's form."""
    session = requests.Session()
    try:
        page = session.get(f"{platform.url}/hub/login", timeout=30)
        xsrf = session.cookies.get("_xsrf", path="/hub/")
        response = session.post(f"{platform.url}/hub/login?next=", data={
            "username": USER, "password": password, "_xsrf": xsrf}, allow_redirects=False, timeout=30)
    except requests.RequestException as err:
        return None, f"{type(err).__name__}: {err}"
    if response.status_code == 302:
        return 302, "logged in"
    return response.status_code, _error_text(response.text or page.text)


def _error_text(html):
    import re

    body = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html, flags=re.DOTALL)
    main = re.search(r'<div class="error">(.*?)</div>\s*</div>', body, re.DOTALL)
    return user_message(re.sub(r"<[^>]+>", " ", main.group(1) if main else body))


def aif(*args):
    done = subprocess.run([AIF, *args], check=False, capture_output=True, text=True, timeout=120)
    return done.returncode, user_message(done.stderr or done.stdout)


def test_disk_full_in_the_state_directory(small_state_dir, fault_record):
    record = fault_record("disk_full", f"disk full in the state directory (a {SIZE} tmpfs)",
                          "clear errors, no corrupt database; works again once space is freed", order=6)
    state = small_state_dir
    platform = Platform(state, port=free_port())
    try:
        platform.start(timeout=240)
        password = platform.add_user(USER)
        token = platform.user_token(USER)
        log_one_run(platform, token, "before")
        filler = fill(state)
        figures = record.figures
        figures["filesystem"] = f"tmpfs {SIZE}"

        figures["login_full"] = try_login(platform, password)
        try:
            log_one_run(platform, token, "while-full")
            figures["mlflow_full"] = "accepted"
        except Exception as err:  # noqa: BLE001 - the message a user gets is the figure
            figures["mlflow_full"] = user_message(f"{type(err).__name__}: {err}")
        figures["aif_user_add_full"] = aif("user", "add", "aifdisk2", "--state-dir", str(state))
        figures["aif_status_full"] = aif("status", "--state-dir", str(state))
        figures["alive_while_full"] = platform.check_health()

        filler.unlink()
        figures["integrity_after"] = integrity(state)
        figures["health_after"] = platform.check_health()
        figures["login_after"] = try_login(platform, password)[0]
        store, run_id = log_one_run(platform, token, "after")
        figures["mlflow_after_points"] = len(store.get_metric_history(run_id, "loss"))
        figures["aif_user_add_after"] = aif("user", "add", "aifdisk3", "--state-dir", str(state))[0]
    finally:
        platform.stop()

    ok_dbs = sum(v == "ok" for v in figures["integrity_after"].values())
    record.observed = (
        f"while full: login {figures['login_full'][0]} \"{figures['login_full'][1][:80]}\"; MLflow: "
        f"\"{figures['mlflow_full'][:100]}\"; `aif user add`: \"{figures['aif_user_add_full'][1][:100]}\"; "
        f"after freeing: integrity_check ok on {ok_dbs}/{len(figures['integrity_after'])} databases, login "
        f"{figures['login_after']}, MLflow {figures['mlflow_after_points']}/3 points")
    assert figures["mlflow_full"] != "accepted" and clear(figures["mlflow_full"])
    assert "space" in figures["mlflow_full"].lower() or "full" in figures["mlflow_full"].lower()
    assert figures["login_full"][0] in (302, 500, 503, 507) and clear(figures["login_full"][1])
    assert figures["aif_user_add_full"][0] != 0 and clear(figures["aif_user_add_full"][1])
    assert "space" in figures["aif_user_add_full"][1].lower()
    assert ok_dbs == len(figures["integrity_after"]) >= 3, figures["integrity_after"]
    assert set(figures["health_after"].values()) == {"ok"}, figures["health_after"]
    assert figures["login_after"] == 302 and figures["mlflow_after_points"] == 3
    assert figures["aif_user_add_after"] == 0

"""The site configuration: hub database and MLflow stores on a (throwaway) PostgreSQL."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.common.net import free_port
from aifactory.hub.testing.ci import require
from test_platform import check_session_logging

PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name):
    versions = sorted(PG_BIN.glob("*/bin"), key=lambda p: int(p.parent.name)) if PG_BIN.is_dir() else []
    return str(versions[-1] / name) if versions else shutil.which(name)


def _as_postgres_user(cmd):
    # PostgreSQL refuses to run as root; Debian's package creates the `postgres` user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    initdb = _pg_tool("initdb")
    require(initdb is not None, "PostgreSQL not found: install Debian's postgresql (make sysdeps)")
    base = tmp_path_factory.mktemp("pg")
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o755)
        for parent in base.parents:  # pytest's temp dirs are private to root
            if str(parent).startswith(str(tmp_path_factory.getbasetemp().parent)):
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
    port = free_port()
    subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    pg_ctl = _pg_tool("pg_ctl")
    subprocess.run(
        _as_postgres_user([pg_ctl, "-D", str(data), "-w", "-l", str(base / "pg.log"),
                           "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
        check=True, capture_output=True)
    try:
        for db in ("jupyterhub", "mlflow", "mlflow_auth"):
            subprocess.run(_as_postgres_user([_pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db]),
                           check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)


@pytest.mark.postgres
def test_platform_on_postgresql(postgres, platform_factory, tmp_path):
    config = tmp_path / "site_config.py"
    config.write_text(
        f"c.AIFPlatform.hub_db_url = '{postgres}/jupyterhub'\n"
        f"c.MLflowService.backend_store_uri = '{postgres}/mlflow'\n"
        f"c.MLflowService.auth_db_uri = '{postgres}/mlflow_auth'\n"
    )
    platform = platform_factory(tmp_path / "state", config_file=config)
    check_session_logging(platform)
    # the data really went to PostgreSQL, not to a SQLite file beside it
    assert not (tmp_path / "state" / "hub" / "jupyterhub.sqlite").exists()
    assert not (tmp_path / "state" / "mlflow" / "mlflow.sqlite").exists()
    rows = subprocess.run(
        _as_postgres_user([_pg_tool("psql"), postgres + "/mlflow", "-tAc", "select count(*) from runs"]),
        capture_output=True, text=True, check=True,
    )
    assert int(rows.stdout.strip()) >= 1

"""pytest fixtures that start real components on free ports and always stop them.

`platform` is session-scoped: one platform serves every test that needs one (start-up costs
tens of seconds on a 2-core machine). Tests that restart or break a platform make their own
with `platform_factory`. tests/conftest.py imports these, so every test can ask for them.
"""

import os
import pwd

import pytest

from ...common.net import free_port
from ..unix_accounts import remove_unix_user
from .platform import start_platform


@pytest.fixture
def port():
    return free_port()


@pytest.fixture(scope="session")
def platform(tmp_path_factory):
    accounts = _accounts()
    p = start_platform(tmp_path_factory.mktemp("platform"))
    try:
        yield p
    finally:
        stop_and_remove_accounts(p, accounts)


@pytest.fixture
def platform_factory(tmp_path):
    started = []
    accounts = _accounts()

    def make(state_dir=None, **kwargs):
        p = start_platform(state_dir or tmp_path / f"state{len(started)}", **kwargs)
        started.append(p)
        return p

    yield make
    for p in started:
        stop_and_remove_accounts(p, accounts)


def _accounts():
    return {entry.pw_name for entry in pwd.getpwall()}


def stop_and_remove_accounts(platform, accounts_before):
    """Stop the platform, then delete the Unix accounts a root hub made for its users' sessions
    (those that did not exist before it started): a test run leaves no accounts behind."""
    try:
        listed = platform.api("GET", "/users").json()
        users = [u["name"] for u in (listed.get("items", []) if isinstance(listed, dict) else listed)]
    except Exception:  # noqa: BLE001 - a hub that is already down: nothing to read
        users = []
    platform.stop()
    if os.geteuid() == 0:
        for name in set(users) - accounts_before:
            remove_unix_user(name)


# --- a real OpenID Connect provider (django-oidc-provider, test extra) on loopback ----------------

@pytest.fixture(scope="session")
def oidc_db_template(tmp_path_factory):
    """One migrated, empty SQLite file per session: later providers start in about a second."""
    return tmp_path_factory.getbasetemp() / "oidc-db-template" / "db.sqlite3"


@pytest.fixture
def oidc_provider(tmp_path, oidc_db_template):
    """A fresh provider per test (its own users, clients and signing key)."""
    from .oidc_idp import OIDCProvider

    with OIDCProvider(tmp_path, db_template=oidc_db_template,
                      claim_scopes={"eduperson_entitlement": "eduperson_entitlement"}) as idp:
        yield idp

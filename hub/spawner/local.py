"""The local spawner of the embedded default: each user's server is a process on this machine.

Users are competing companies' staff, so a session never runs as root and never as somebody
else: when the hub runs as root, each user's server runs as that user's own Unix account
(made on first start, with a 0700 home, like JupyterHub's `LocalAuthenticator.create_system_users`
and `LocalProcessSpawner`). When the hub runs as an ordinary user (a laptop), it cannot switch
accounts: the platform is then single-user, for the person who started it (`aif up` says so).
A site uses the Slurm spawner (`aif-slurm`).
"""

import asyncio
import os
import pwd
import sys

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Bool, Integer, Unicode, default

from ...common.envvars import STATE_DIR
from ..unix_accounts import AccountError, ensure_unix_user
from .env import PlatformEnvMixin
from .failures import spawn_failure

#: files a session creates are its user's alone (project spaces widen this with a default ACL)
SESSION_UMASK = 0o077


def hub_is_root():
    return os.geteuid() == 0


class AIFLocalSpawner(PlatformEnvMixin, LocalProcessSpawner):
    """A local process per user, as the user's own Unix account (or, on a laptop, as the hub's)."""

    run_as_hub_user = Bool(
        help="""Run every session as the hub's own Unix account instead of each user's own.
        Default: True only when the hub is not root (a laptop: single-user, see `single_user`).
        A hub running as root refuses to start any session while this is True: it would be a
        root shell for whoever logs in.""",
    ).tag(config=True)

    @default("run_as_hub_user")
    def _default_run_as_hub_user(self):
        return not hub_is_root()

    single_user = Unicode(
        "",
        help="""With `run_as_hub_user`: the one hub user who may start a session (sessions then
        are that person's own processes). Empty: anyone who can log in. The platform sets it to
        its admin account when the hub is not root.""",
    ).tag(config=True)

    create_system_users = Bool(
        True,
        help="""When the hub is root: create a missing Unix account (0700 home) for a user on
        their first start, with the user-name rules of the users file. False: the account must
        exist (a site with LDAP/IdM accounts).""",
    ).tag(config=True)

    session_umask = Integer(
        SESSION_UMASK,
        help="""umask of every session: 0o077 keeps new files private to their owner.""",
    ).tag(config=True)

    home_dir_template = Unicode(
        help="""With `run_as_hub_user`: where each user's files go ({username} is replaced).
        Default: <state_dir>/users/{username}. Otherwise a session's home is its account's.""",
    ).tag(config=True)

    @default("home_dir_template")
    def _default_home_dir_template(self):
        return os.path.join(STATE_DIR.get("/tmp"), "users", "{username}")

    @default("cmd")
    def _default_cmd(self):
        # the singleuser server of the platform's own environment, with its extensions
        return [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @property
    def shared_home(self):
        return self.home_dir_template.format(username=self.user.name)

    async def start(self):
        if self.run_as_hub_user:
            self._check_single_user()
        else:
            await self._ensure_account()
        return await super().start()

    def _check_single_user(self):
        if hub_is_root():
            raise spawn_failure(
                "The session was not started: AIFLocalSpawner.run_as_hub_user is True while the hub "
                "runs as root, so it would run as root. Set c.AIFLocalSpawner.run_as_hub_user = False "
                "(each user's own Unix account).", "session as root refused", 403)
        if self.single_user and self.user.name != self.single_user:
            hub_account = pwd.getpwuid(os.geteuid()).pw_name
            raise spawn_failure(
                f"This platform is single-user: it runs as the Unix account {hub_account!r}, not "
                f"root, so only {self.single_user!r} may start a session. Start it as root for "
                "several users (each then runs as their own account).", "single-user platform", 403)

    async def _ensure_account(self):
        """The user's Unix account, made on first start; never uid 0."""
        name = self.user.name
        try:
            if self.create_system_users:
                account = await asyncio.to_thread(ensure_unix_user, name)
            else:
                account = pwd.getpwnam(name)
        except KeyError:
            raise spawn_failure(f"The session was not started: there is no Unix account {name!r} on this "
                                "machine (AIFLocalSpawner.create_system_users is False).",
                                "no Unix account", 403) from None
        except AccountError as err:
            raise spawn_failure(f"The session was not started: {err}", "no Unix account", 403) from None
        if account.pw_uid == 0:
            raise spawn_failure(f"The session was not started: {name!r} is the Unix superuser; no session "
                                "may run as root.", "session as root refused", 403)

    def make_preexec_fn(self, name):
        umask = self.session_umask
        if self.run_as_hub_user:
            home = self.shared_home

            def own_account():
                os.umask(umask)
                os.makedirs(home, 0o700, exist_ok=True)
                os.chdir(home)

            return own_account
        switch = set_user_setuid(name)

        def users_account():
            os.umask(umask)
            switch()

        return users_account

    def user_env(self, env):
        if self.run_as_hub_user:
            env["USER"] = pwd.getpwuid(os.geteuid()).pw_name
            env["HOME"] = self.shared_home
            return env
        return super().user_env(env)

"""Experiments shared read-only with hub groups, and the per-user grants made for them.

An owner shares an experiment with a group (POST aif/share); each member then gets MLflow READ
on it, granted by the bridge as MLflow's service admin and kept in sync with the group's
membership (`Backends.ensure_identity`). This store remembers both, in the service's own SQLite.
"""

import sqlite3


class ShareStore:
    """Experiment shares with groups, and the per-user grants the bridge made for them."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS shares (experiment_id TEXT, group_name TEXT, shared_by TEXT,
                PRIMARY KEY (experiment_id, group_name));
            CREATE TABLE IF NOT EXISTS grants (experiment_id TEXT, username TEXT,
                PRIMARY KEY (experiment_id, username));
            """
        )

    def add_share(self, experiment_id, group, by):
        self.db.execute("INSERT OR REPLACE INTO shares VALUES (?, ?, ?)", (experiment_id, group, by))

    def remove_share(self, experiment_id, group):
        self.db.execute("DELETE FROM shares WHERE experiment_id=? AND group_name=?", (experiment_id, group))

    def shares_of(self, experiment_id):
        rows = self.db.execute("SELECT group_name FROM shares WHERE experiment_id=?", (experiment_id,))
        return [r[0] for r in rows]

    def experiments_for_groups(self, groups):
        if not groups:
            return set()
        marks = ",".join("?" * len(groups))
        rows = self.db.execute(f"SELECT experiment_id FROM shares WHERE group_name IN ({marks})", list(groups))
        return {r[0] for r in rows}

    def grants_of(self, username):
        return {r[0] for r in self.db.execute("SELECT experiment_id FROM grants WHERE username=?", (username,))}

    def record_grant(self, experiment_id, username):
        self.db.execute("INSERT OR IGNORE INTO grants VALUES (?, ?)", (experiment_id, username))

    def forget_grant(self, experiment_id, username):
        self.db.execute("DELETE FROM grants WHERE experiment_id=? AND username=?", (experiment_id, username))

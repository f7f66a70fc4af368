"""The store's schema: migrations applied in order, ``PRAGMA user_version`` counting them.

Layer: adapters (SQLite), used by :mod:`._store_base` when a store is opened.
"""

from __future__ import annotations

from typing import Final

#: Schema migrations, applied in order; ``PRAGMA user_version`` is the number applied.
#: Append only: a released migration is never edited.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE rigs (
        name            TEXT PRIMARY KEY,
        prefix          TEXT NOT NULL UNIQUE,
        repo            TEXT NOT NULL,
        default_branch  TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE TABLE beads (
        id          TEXT PRIMARY KEY,
        rig         TEXT,
        title       TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        priority    INTEGER NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 4),
        status      TEXT NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'hooked', 'in_review', 'closed', 'blocked')),
        reason      TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX beads_by_rig_status ON beads (rig, status);
    CREATE TABLE polecats (
        rig         TEXT NOT NULL,
        name        TEXT NOT NULL,
        bead        TEXT,
        branch      TEXT NOT NULL,
        worktree    TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (rig, name)
    );
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL NOT NULL,
        kind    TEXT NOT NULL,
        rig     TEXT,
        polecat TEXT,
        bead    TEXT,
        data    TEXT NOT NULL DEFAULT '{}'
    );
    """,
    """
    CREATE TABLE roles (
        name        TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        pid         INTEGER,
        started_at  REAL,
        restarts    INTEGER NOT NULL DEFAULT 0,
        last_exit   INTEGER,
        reason      TEXT,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE merge_requests (
        id          TEXT PRIMARY KEY,
        rig         TEXT NOT NULL,
        bead        TEXT NOT NULL,
        polecat     TEXT NOT NULL,
        branch      TEXT NOT NULL,
        state       TEXT NOT NULL,
        priority    INTEGER NOT NULL DEFAULT 2,
        reason      TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX merge_requests_by_rig_state ON merge_requests (rig, state);
    """,
    """
    ALTER TABLE polecats ADD COLUMN agent TEXT NOT NULL DEFAULT '';
    ALTER TABLE polecats ADD COLUMN session TEXT;
    ALTER TABLE polecats ADD COLUMN respawns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN reason TEXT;
    ALTER TABLE polecats ADD COLUMN sling INTEGER;
    ALTER TABLE merge_requests ADD COLUMN head TEXT;
    ALTER TABLE merge_requests ADD COLUMN base TEXT;
    CREATE TABLE slings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        bead        TEXT NOT NULL,
        rig         TEXT NOT NULL,
        agent       TEXT,
        force       INTEGER NOT NULL DEFAULT 0,
        state       TEXT NOT NULL DEFAULT 'queued',
        polecat     TEXT,
        error       TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX slings_by_state ON slings (state, id);
    """,
    """
    ALTER TABLE merge_requests ADD COLUMN step TEXT;
    ALTER TABLE merge_requests ADD COLUMN gate TEXT;
    ALTER TABLE merge_requests ADD COLUMN candidate TEXT;
    ALTER TABLE merge_requests ADD COLUMN merged_commit TEXT;
    ALTER TABLE merge_requests ADD COLUMN log_path TEXT;
    ALTER TABLE slings ADD COLUMN note TEXT;
    """,
    """
    ALTER TABLE polecats ADD COLUMN incarnation TEXT;
    ALTER TABLE polecats ADD COLUMN output_tail TEXT;
    ALTER TABLE beads ADD COLUMN closed_commit TEXT;
    ALTER TABLE merge_requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'polecat';
    ALTER TABLE merge_requests ADD COLUMN tail TEXT;
    ALTER TABLE merge_requests ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE rigs ADD COLUMN mq_paused TEXT;
    ALTER TABLE rigs ADD COLUMN landed_head TEXT;
    ALTER TABLE rigs ADD COLUMN remote_head TEXT;
    ALTER TABLE rigs ADD COLUMN push_error TEXT;
    """,
    """
    ALTER TABLE polecats ADD COLUMN nudges INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN tokens_in INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN tokens_out INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN agent_session TEXT;
    ALTER TABLE beads ADD COLUMN tokens_in INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE beads ADD COLUMN tokens_out INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE beads ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    ALTER TABLE merge_requests ADD COLUMN done_by TEXT NOT NULL DEFAULT 'agent';
    """,
    # 7: a merge request names the polecat's incarnation (names are reused); a nuked
    # polecat's row is kept as history. Open and merged MRs of a live polecat of that
    # name, younger than it, are its own: the only time the name+age rule is used.
    """
    ALTER TABLE merge_requests ADD COLUMN incarnation TEXT;
    UPDATE merge_requests SET incarnation = (
        SELECT p.incarnation FROM polecats p
        WHERE p.rig = merge_requests.rig AND p.name = merge_requests.polecat
          AND merge_requests.created_at >= p.created_at)
    WHERE kind = 'polecat';
    CREATE TABLE polecat_history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        rig         TEXT NOT NULL,
        name        TEXT NOT NULL,
        incarnation TEXT,
        bead        TEXT,
        branch      TEXT NOT NULL,
        agent       TEXT NOT NULL,
        last_state  TEXT NOT NULL,
        ended       TEXT NOT NULL,
        reason      TEXT,
        created_at  REAL NOT NULL,
        nuked_at    REAL NOT NULL,
        row         TEXT NOT NULL
    );
    CREATE INDEX polecat_history_by_bead ON polecat_history (bead);
    """,
    # N: bead dependencies: ``bead`` needs ``need`` (closed) before its slings dispatch.
    """
    CREATE TABLE bead_needs (
        bead        TEXT NOT NULL,
        need        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (bead, need)
    );
    CREATE INDEX bead_needs_by_need ON bead_needs (need);
    """,
    # N: convoys, groups of beads followed as one piece of work; state, closed, total and
    # stuck_* are its last computed state (roles/core/convoy.py), compared on every change
    # of a bead of it, so that each change writes its one event.
    """
    CREATE TABLE IF NOT EXISTS convoys (
        id           TEXT PRIMARY KEY,
        title        TEXT NOT NULL,
        rig          TEXT,
        state        TEXT NOT NULL DEFAULT 'open',
        closed       INTEGER NOT NULL DEFAULT 0,
        total        INTEGER NOT NULL DEFAULT 0,
        stuck_bead   TEXT,
        stuck_reason TEXT,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS convoy_beads (
        convoy      TEXT NOT NULL,
        bead        TEXT NOT NULL,
        position    INTEGER NOT NULL,
        PRIMARY KEY (convoy, bead)
    );
    CREATE INDEX IF NOT EXISTS convoy_beads_by_bead ON convoy_beads (bead);
    """,
    # N: worktree bootstrap: a live polecat's slot (unique in its rig while the row lives;
    # the row goes at nuke) and the first port of its block it was given.
    """
    ALTER TABLE polecats ADD COLUMN slot INTEGER;
    ALTER TABLE polecats ADD COLUMN port INTEGER;
    """,
)

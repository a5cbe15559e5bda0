"""Crash-safe container records in SQLite.

WAL mode with synchronous=NORMAL: a commit is durable against a kill -9 of the
daemon (the WAL is in the page cache and the kernel keeps it), though not
against power loss between checkpoints. Each record is one row holding a JSON
document, written whole in one transaction, so a reader never sees half of it.
Calls are short and run on the event loop's thread: each is one small write.
"""

import json
import sqlite3
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    doc  TEXT NOT NULL
);
"""


class Store:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def save_container(self, record: dict) -> None:
        self._db.execute(
            "INSERT INTO containers (id, name, doc) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, doc = excluded.doc",
            (record["Id"], record["Name"], json.dumps(record)),
        )

    def delete_container(self, container_id: str) -> None:
        self._db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def load_containers(self) -> list[dict]:
        rows = self._db.execute("SELECT doc FROM containers ORDER BY rowid")
        return [json.loads(doc) for (doc,) in rows]

    def close(self) -> None:
        self._db.close()

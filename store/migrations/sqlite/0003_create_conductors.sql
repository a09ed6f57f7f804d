-- Conductors: one row per conductor hostname, touched by its heartbeat.
CREATE TABLE conductors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    conductor_group TEXT NOT NULL DEFAULT '',
    drivers TEXT NOT NULL DEFAULT '[]',
    online INTEGER NOT NULL DEFAULT 1,
    last_heartbeat TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    CONSTRAINT conductors_hostname_key UNIQUE (hostname)
);

CREATE INDEX conductors_last_heartbeat_idx ON conductors (last_heartbeat);

-- Node history: state changes and notable events, oldest first per node.
CREATE TABLE node_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    severity TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event TEXT NOT NULL,
    conductor TEXT,
    from_state TEXT,
    to_state TEXT,
    created_at TEXT NOT NULL,
    CONSTRAINT node_history_uuid_key UNIQUE (uuid)
);

CREATE INDEX node_history_node_idx ON node_history (node_uuid, created_at, id);

-- Events the API has accepted but not yet handed to the bus: the API answers once the row is
-- written, a relay publishes it and deletes it. `claimed_until` lets several API processes
-- share the table (a claim lapses if its holder dies).
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until TEXT,
    created_at TEXT NOT NULL
);

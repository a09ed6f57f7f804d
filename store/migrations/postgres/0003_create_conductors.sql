-- Conductors: one row per conductor hostname, touched by its heartbeat.
CREATE TABLE conductors (
    id BIGSERIAL PRIMARY KEY,
    hostname TEXT NOT NULL,
    conductor_group TEXT NOT NULL DEFAULT '',
    drivers JSONB NOT NULL DEFAULT '[]',
    online BOOLEAN NOT NULL DEFAULT TRUE,
    last_heartbeat TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ,
    CONSTRAINT conductors_hostname_key UNIQUE (hostname)
);

CREATE INDEX conductors_last_heartbeat_idx ON conductors (last_heartbeat);

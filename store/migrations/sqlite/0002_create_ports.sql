-- Ports: the NICs of a node. MAC addresses are stored normalised (lower-case, colons) and are
-- unique case-insensitively; deleting a node deletes its ports.
CREATE TABLE ports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    address TEXT NOT NULL,
    node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    pxe_enabled INTEGER NOT NULL DEFAULT 1,
    local_link_connection TEXT NOT NULL DEFAULT '{}',
    physical_network TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT,
    CONSTRAINT ports_uuid_key UNIQUE (uuid)
);

CREATE UNIQUE INDEX ports_address_key ON ports (lower(address));
CREATE INDEX ports_node_uuid_idx ON ports (node_uuid, id);

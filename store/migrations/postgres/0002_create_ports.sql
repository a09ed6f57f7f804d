-- Ports: the NICs of a node. MAC addresses are stored normalised (lower-case, colons) and are
-- unique case-insensitively; deleting a node deletes its ports.
CREATE TABLE ports (
    id BIGSERIAL PRIMARY KEY,
    uuid UUID NOT NULL,
    address TEXT NOT NULL,
    node_uuid UUID NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    pxe_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    local_link_connection JSONB NOT NULL DEFAULT '{}',
    physical_network TEXT,
    extra JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ,
    CONSTRAINT ports_uuid_key UNIQUE (uuid)
);

CREATE UNIQUE INDEX ports_address_key ON ports (lower(address));
CREATE INDEX ports_node_uuid_idx ON ports (node_uuid, id);

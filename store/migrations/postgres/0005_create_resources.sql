-- The API's other resources (chassis, port groups, volume connectors and targets, deploy
-- templates, runbooks, inspection rules, allocations): one row each, their fields in `body`.
-- Names and natural keys (a port group's MAC, a connector's type + id, a target's node + boot
-- index) are unique within their kind: the columns hold `kind/value`. Rows tied to a node go
-- with it.
CREATE TABLE resources (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    uuid UUID NOT NULL,
    name TEXT,
    scoped_name TEXT,
    scoped_key TEXT,
    node_uuid UUID REFERENCES nodes (uuid) ON DELETE CASCADE,
    body JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ,
    CONSTRAINT resources_uuid_key UNIQUE (uuid),
    CONSTRAINT resources_scoped_name_key UNIQUE (scoped_name),
    CONSTRAINT resources_scoped_key_key UNIQUE (scoped_key)
);

CREATE INDEX resources_kind_idx ON resources (kind, id);
CREATE INDEX resources_node_idx ON resources (node_uuid, kind, id);

-- A port may belong to a port group of its node.
ALTER TABLE ports ADD COLUMN portgroup_uuid UUID REFERENCES resources (uuid);

-- The service's notes on a port (e.g. the VIF attached to it).
ALTER TABLE ports ADD COLUMN internal_info JSONB NOT NULL DEFAULT '{}';

-- Node fields beyond the first slice.
ALTER TABLE nodes ADD COLUMN chassis_uuid UUID REFERENCES resources (uuid);
ALTER TABLE nodes ADD COLUMN allocation_uuid UUID;
ALTER TABLE nodes ADD COLUMN shard TEXT;
ALTER TABLE nodes ADD COLUMN parent_node UUID;
ALTER TABLE nodes ADD COLUMN instance_name TEXT;
ALTER TABLE nodes ADD COLUMN secure_boot BOOLEAN;
ALTER TABLE nodes ADD COLUMN disable_power_off BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE nodes ADD COLUMN console_enabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE nodes ADD COLUMN raid_config JSONB NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN target_raid_config JSONB NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN service_step JSONB NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN inspection_started_at TIMESTAMPTZ;
ALTER TABLE nodes ADD COLUMN inspection_finished_at TIMESTAMPTZ;
ALTER TABLE nodes ADD COLUMN attributes JSONB NOT NULL DEFAULT '{}';
CREATE INDEX nodes_shard_idx ON nodes (shard);
CREATE INDEX nodes_chassis_idx ON nodes (chassis_uuid);

-- Nodes: one row per bare-metal machine. `id` is the insertion order (Ironic's default sort);
-- `uuid` is the public identifier. JSON columns are JSONB. `generation` guards every write;
-- `reservation` is the exclusive per-node lock (conductor hostname).
CREATE TABLE nodes (
    id BIGSERIAL PRIMARY KEY,
    uuid UUID NOT NULL,
    name TEXT,
    driver TEXT NOT NULL,
    driver_info JSONB NOT NULL DEFAULT '{}',
    driver_internal_info JSONB NOT NULL DEFAULT '{}',
    instance_info JSONB NOT NULL DEFAULT '{}',
    instance_uuid TEXT,
    properties JSONB NOT NULL DEFAULT '{}',
    extra JSONB NOT NULL DEFAULT '{}',
    provision_state TEXT NOT NULL,
    target_provision_state TEXT,
    provision_updated_at TIMESTAMPTZ,
    power_state TEXT,
    target_power_state TEXT,
    maintenance BOOLEAN NOT NULL DEFAULT FALSE,
    maintenance_reason TEXT,
    fault TEXT,
    last_error TEXT,
    reservation TEXT,
    conductor TEXT,
    conductor_group TEXT NOT NULL DEFAULT '',
    owner TEXT,
    lessee TEXT,
    resource_class TEXT,
    bios_interface TEXT,
    boot_interface TEXT,
    console_interface TEXT,
    deploy_interface TEXT,
    firmware_interface TEXT,
    inspect_interface TEXT,
    management_interface TEXT,
    network_interface TEXT,
    power_interface TEXT,
    raid_interface TEXT,
    rescue_interface TEXT,
    storage_interface TEXT,
    vendor_interface TEXT,
    automated_clean BOOLEAN,
    protected BOOLEAN NOT NULL DEFAULT FALSE,
    protected_reason TEXT,
    retired BOOLEAN NOT NULL DEFAULT FALSE,
    retired_reason TEXT,
    description TEXT,
    traits JSONB NOT NULL DEFAULT '[]',
    clean_step JSONB NOT NULL DEFAULT '{}',
    deploy_step JSONB NOT NULL DEFAULT '{}',
    network_data JSONB NOT NULL DEFAULT '{}',
    boot_mode TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ,
    CONSTRAINT nodes_uuid_key UNIQUE (uuid),
    CONSTRAINT nodes_name_key UNIQUE (name),
    CONSTRAINT nodes_instance_uuid_key UNIQUE (instance_uuid)
);

-- Filters. Each also carries `id` so a filtered listing in insertion order can walk the index.
CREATE INDEX nodes_provision_state_idx ON nodes (provision_state, id);
CREATE INDEX nodes_reservation_idx ON nodes (reservation);
CREATE INDEX nodes_driver_idx ON nodes (driver, id);
CREATE INDEX nodes_owner_idx ON nodes (owner);
CREATE INDEX nodes_conductor_idx ON nodes (conductor);

-- Keyset pagination: one (sort key, id) index per sort key. Nullable keys sort NULLs first
-- when ascending (as Ironic on MySQL does, and as SQLite does natively), so their indexes
-- are declared NULLS FIRST and serve both directions.
CREATE INDEX nodes_name_sort_idx ON nodes (name NULLS FIRST, id);
CREATE INDEX nodes_created_at_sort_idx ON nodes (created_at, id);
CREATE INDEX nodes_updated_at_sort_idx ON nodes (updated_at NULLS FIRST, id);
CREATE INDEX nodes_provision_updated_at_sort_idx ON nodes (provision_updated_at NULLS FIRST, id);
CREATE INDEX nodes_power_state_sort_idx ON nodes (power_state NULLS FIRST, id);

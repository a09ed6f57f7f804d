-- The time of an agent heartbeat that changed nothing else in the agent's session. It is
-- written alone, without a generation bump, so 100,000 agents heartbeating never make a
-- conductor's copy of a node stale; reads fold it into
-- driver_internal_info.agent_last_heartbeat. Room left in each page lets PostgreSQL update
-- it in place (a HOT update: no index is touched).
ALTER TABLE nodes ADD COLUMN agent_heartbeat_at TIMESTAMPTZ;
ALTER TABLE nodes SET (fillfactor = 90);

-- The time of an agent heartbeat that changed nothing else in the agent's session. It is
-- written alone, without a generation bump, so agents heartbeating never make a conductor's
-- copy of a node stale; reads fold it into driver_internal_info.agent_last_heartbeat.
ALTER TABLE nodes ADD COLUMN agent_heartbeat_at TEXT;

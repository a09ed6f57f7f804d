-- Node history (1.113, 1.115): the provision state and target when the entry was recorded,
-- how long the node had been in its previous state, and the project that caused it.
ALTER TABLE node_history ADD COLUMN state TEXT;
ALTER TABLE node_history ADD COLUMN target_state TEXT;
ALTER TABLE node_history ADD COLUMN duration_seconds INTEGER;
ALTER TABLE node_history ADD COLUMN project TEXT;
-- Ports (1.111): whether a port may join a dynamic port group.
ALTER TABLE ports ADD COLUMN available_for_dynamic_portgroup BOOLEAN NOT NULL DEFAULT TRUE;

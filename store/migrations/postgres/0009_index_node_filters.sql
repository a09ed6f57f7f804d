-- Filtered listings in insertion order (Ironic's default) walk a (filter, id) index and stop
-- after one page, instead of collecting every match and sorting it: at 100,000 nodes an
-- owner or conductor group holds thousands. Replaces the single-column filter indexes.
DROP INDEX nodes_owner_idx;
CREATE INDEX nodes_owner_idx ON nodes (owner, id);
DROP INDEX nodes_conductor_idx;
CREATE INDEX nodes_conductor_idx ON nodes (conductor, id);
DROP INDEX nodes_shard_idx;
CREATE INDEX nodes_shard_idx ON nodes (shard, id);
CREATE INDEX nodes_lessee_idx ON nodes (lessee, id);
CREATE INDEX nodes_conductor_group_idx ON nodes (conductor_group, id);
CREATE INDEX nodes_resource_class_idx ON nodes (resource_class, id);

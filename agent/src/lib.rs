//! The on-node agent: inventory, lookup and heartbeat, gRPC command server, disk writing.

//! Routing keys of the Ferric events and topic-pattern matching.
//!
//! Keys are dot-separated words; in patterns `*` matches exactly one word and `#` zero or more,
//! as on an AMQP topic exchange.

use crate::BusError;

/// [`proto::events::ProvisionRequested`].
pub const PROVISION: &str = "node.provision";
/// [`proto::events::PowerRequested`].
pub const POWER: &str = "node.power";
/// [`proto::events::ManagementRequested`].
pub const MANAGEMENT: &str = "node.management";
/// [`proto::events::AgentHeartbeat`].
pub const HEARTBEAT: &str = "node.heartbeat";
/// [`proto::events::NodeStateChanged`].
pub const CHANGED: &str = "node.changed";
/// [`proto::events::DeployProgressed`].
pub const PROGRESS: &str = "node.progress";
/// [`proto::events::MaintenanceChanged`].
pub const MAINTENANCE: &str = "node.maintenance";
/// [`proto::events::AllocationRequested`].
pub const ALLOCATION: &str = "allocation.requested";
/// Every node event.
pub const ALL_NODE_EVENTS: &str = "node.#";

/// The routing key of node work sent to one conductor, bound to that conductor's own queue:
/// the API sends a node's work to the conductor the hash ring gives the node.
pub fn conductor_key(hostname: &str) -> String {
    format!("conductor.{hostname}")
}

/// AMQP limits short strings (routing keys, queue names, message ids) to 255 bytes.
pub(crate) const MAX_SHORT_STRING: usize = 255;

/// Whether `key` matches the topic `pattern`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    matches_words(&pattern, &key)
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((&k, key_rest)) => (word == "*" || word == k) && matches_words(rest, key_rest),
            None => false,
        },
    }
}

pub(crate) fn check_routing_key(key: &str) -> Result<(), BusError> {
    if key.len() > MAX_SHORT_STRING {
        return Err(BusError::InvalidArgument(format!(
            "routing key is {} bytes long; the limit is {MAX_SHORT_STRING}",
            key.len()
        )));
    }
    if key.contains(['*', '#']) {
        return Err(BusError::InvalidArgument(format!(
            "routing key {key:?} contains a wildcard; wildcards belong in patterns"
        )));
    }
    Ok(())
}

pub(crate) fn check_pattern(pattern: &str) -> Result<(), BusError> {
    if pattern.is_empty() || pattern.len() > MAX_SHORT_STRING {
        return Err(BusError::InvalidArgument(format!(
            "routing pattern must be 1 to {MAX_SHORT_STRING} bytes long (got {})",
            pattern.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_queue_name(queue: &str) -> Result<(), BusError> {
    // Leave room for the ".dead" suffix of the dead-letter queue.
    let limit = MAX_SHORT_STRING - ".dead".len();
    if queue.is_empty() || queue.len() > limit || queue.starts_with("amq.") {
        return Err(BusError::InvalidArgument(format!(
            "queue name must be 1 to {limit} bytes long and not start with \"amq.\" (got {queue:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_topic_matching() {
        let cases = [
            ("node.provision", "node.provision", true),
            ("node.provision", "node.power", false),
            ("node.*", "node.power", true),
            ("node.*", "node.power.extra", false),
            ("node.#", "node.power.extra", true),
            ("node.#", "node", true),
            ("#", "anything.at.all", true),
            ("#", "", true),
            ("*.power", "node.power", true),
            ("*.power", "power", false),
            ("node.#.done", "node.a.b.done", true),
            ("node.#.done", "node.done", true),
            ("node.#.done", "node.a.b", false),
            ("node", "node.power", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    #[test]
    fn test_argument_checks() {
        assert!(check_routing_key("node.power").is_ok());
        assert!(check_routing_key("node.*").is_err());
        assert!(check_routing_key(&"x".repeat(256)).is_err());
        assert!(check_queue_name("").is_err());
        assert!(check_queue_name("amq.gen").is_err());
        assert!(check_queue_name("conductor").is_ok());
        assert!(check_pattern("").is_err());
    }
}

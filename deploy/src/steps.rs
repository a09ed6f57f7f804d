//! Deploy and clean step planning: an ordered list of idempotent steps and a pure planner
//! that picks the next one from the node's recorded state.

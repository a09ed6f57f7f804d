//! The event bus: a `Bus` trait, RabbitMQ through lapin, and an in-process implementation
//! with the same delivery semantics.

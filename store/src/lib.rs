//! Data access for PostgreSQL and SQLite through sqlx.
//!
//! Module plan: `error` (sqlx errors → `PublicError`, one function), `node`, `port`,
//! `conductor`, `history`, `lock` (reservation queries), migrations per backend.

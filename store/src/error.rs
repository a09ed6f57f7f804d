//! sqlx errors become [`PublicError`] here, in one function ([`public_error`]).
//!
//! The mapping: no row → `NotFound`; unique violation → `AlreadyExists` with a message naming
//! the duplicate (chosen by the violated constraint); foreign-key violation → what the caller
//! says the missing parent is; serialization failure, deadlock or a busy SQLite database →
//! `Unavailable` (retryable, after the transaction helper has already retried); pool timeout,
//! I/O and a PostgreSQL server shutting down or starting up → `Unavailable`; anything else → `Internal`, whose details go to the log only.

use std::fmt;

use deploy::PublicError;

/// What the failing statement was about, so an error can name it.
pub(crate) struct Ctx {
    kind: &'static str,
    id: String,
    unique: Vec<(&'static str, String)>,
    foreign_key: Option<PublicError>,
}

impl Ctx {
    /// A statement about resource `kind` (e.g. "Node") identified by `id`.
    pub(crate) fn new(kind: &'static str, id: impl fmt::Display) -> Self {
        Self { kind, id: id.to_string(), unique: Vec::new(), foreign_key: None }
    }

    /// The message for a violation of unique constraint `constraint` (its name in the
    /// migrations, e.g. `nodes_name_key`).
    pub(crate) fn unique(mut self, constraint: &'static str, message: impl Into<String>) -> Self {
        self.unique.push((constraint, message.into()));
        self
    }

    /// The error for a foreign-key violation (the parent row is missing).
    pub(crate) fn foreign_key(mut self, err: PublicError) -> Self {
        self.foreign_key = Some(err);
        self
    }
}

/// Turn a sqlx error into the error callers see. The one place this mapping is made.
pub(crate) fn public_error(err: sqlx::Error, ctx: &Ctx) -> PublicError {
    use sqlx::error::ErrorKind;

    if is_retryable(&err) {
        tracing::warn!(error = %err, kind = ctx.kind, id = %ctx.id, "database busy or transaction conflict");
        return PublicError::unavailable("The database is busy, please retry.");
    }
    if server_gone(&err) {
        tracing::warn!(error = %err, kind = ctx.kind, id = %ctx.id, "database unavailable");
        return PublicError::unavailable("The database is unavailable, please retry.");
    }
    match &err {
        sqlx::Error::RowNotFound => PublicError::not_found(ctx.kind, &ctx.id),
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => {
                let constraint = violated_constraint(db.as_ref());
                let message = ctx
                    .unique
                    .iter()
                    .find(|(name, _)| Some(*name) == constraint.as_deref())
                    .map(|(_, m)| m.clone())
                    .unwrap_or_else(|| format!("{} {} already exists.", ctx.kind, ctx.id));
                PublicError::AlreadyExists { message }
            }
            ErrorKind::ForeignKeyViolation => ctx.foreign_key.clone().unwrap_or_else(|| {
                PublicError::invalid(format!(
                    "{} {} refers to a missing resource.",
                    ctx.kind, ctx.id
                ))
            }),
            ErrorKind::NotNullViolation | ErrorKind::CheckViolation | ErrorKind::Other => {
                internal(&err, ctx)
            }
            // `ErrorKind` is non-exhaustive.
            _ => internal(&err, ctx),
        },
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => {
            tracing::warn!(error = %err, kind = ctx.kind, id = %ctx.id, "database unavailable");
            PublicError::unavailable("The database is unavailable, please retry.")
        }
        _ => internal(&err, ctx),
    }
}

fn internal(err: &sqlx::Error, ctx: &Ctx) -> PublicError {
    tracing::error!(error = %err, kind = ctx.kind, id = %ctx.id, "database error");
    PublicError::internal(format!("database error on {} {}: {err}", ctx.kind, ctx.id))
}

/// The name of the violated unique constraint: PostgreSQL reports it; SQLite names the
/// column (`nodes.name` → `nodes_name_key`, our naming scheme) or the index.
fn violated_constraint(db: &dyn sqlx::error::DatabaseError) -> Option<String> {
    if let Some(c) = db.constraint() {
        return Some(c.to_owned());
    }
    let rest = db.message().strip_prefix("UNIQUE constraint failed: ")?;
    if let Some(index) = rest.strip_prefix("index '") {
        return Some(index.trim_end_matches('\'').to_owned());
    }
    // A single-column constraint; multi-column ones are listed with ", ".
    let column = rest.split(", ").next()?;
    Some(format!("{}_key", column.replace('.', "_")))
}

/// Whether running the whole transaction again may succeed: PostgreSQL serialization failure
/// (40001) or deadlock (40P01); SQLite `SQLITE_BUSY`/`SQLITE_LOCKED` (any extended code).
pub(crate) fn is_retryable(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    match code.as_ref() {
        "40001" | "40P01" => true,
        // SQLite reports the extended result code as a decimal string; the primary code is
        // its low byte. Checked by error type so a numeric SQLSTATE is never misread.
        other => {
            db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                && other.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
    }
}

/// Whether PostgreSQL answered that it is going away or not there yet: a connection
/// exception (class 08), an administrator or crash shutdown, "the database system is
/// starting up" (57P01–57P03), or too many connections (53300). These pass when the
/// server is back, so callers see `Unavailable` (503) rather than an internal error.
pub(crate) fn server_gone(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_none() {
        return false;
    }
    db.code().is_some_and(|c| {
        c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
    })
}

/// `Unavailable` for a pool that could not be opened (details to the log).
pub(crate) fn connect_error(backend: &'static str, err: &sqlx::Error) -> PublicError {
    tracing::error!(backend, error = %err, "cannot connect to the database");
    PublicError::unavailable(format!("Cannot connect to the {backend} database."))
}

/// `Internal` for a failed migration (details to the log).
pub(crate) fn migrate_error(
    backend: &'static str,
    err: &sqlx::migrate::MigrateError,
) -> PublicError {
    tracing::error!(backend, error = %err, "database migration failed");
    PublicError::internal(format!("{backend} migration failed: {err}"))
}

/// A database error as a driver would report it, for tests without a database.
#[cfg(test)]
pub(crate) mod fake {
    use std::borrow::Cow;
    use std::fmt;

    use sqlx::error::{DatabaseError, ErrorKind};

    /// The error's message, SQLSTATE code, constraint and kind.
    #[derive(Debug)]
    pub(crate) struct Fake {
        pub(crate) message: &'static str,
        pub(crate) code: Option<&'static str>,
        pub(crate) constraint: Option<&'static str>,
        pub(crate) kind: fn() -> ErrorKind,
    }

    impl fmt::Display for Fake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Fake {}

    impl DatabaseError for Fake {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            self.code.map(Cow::Borrowed)
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            (self.kind)()
        }
    }

    /// As `sqlx` hands it over.
    pub(crate) fn db(fake: Fake) -> sqlx::Error {
        sqlx::Error::Database(Box::new(fake))
    }
}

#[cfg(test)]
mod tests {
    use sqlx::error::ErrorKind;

    use super::fake::{Fake, db};
    use super::*;

    fn unique(message: &'static str, constraint: Option<&'static str>) -> sqlx::Error {
        db(Fake { message, code: Some("23505"), constraint, kind: || ErrorKind::UniqueViolation })
    }

    fn node_ctx() -> Ctx {
        Ctx::new("Node", "n1")
            .unique("nodes_name_key", "name taken")
            .unique("ports_address_key", "mac taken")
            .foreign_key(PublicError::not_found("Node", "parent"))
    }

    #[test]
    fn test_unique_violation_names_the_constraint_on_both_backends() {
        let cases = [
            (unique("duplicate key value", Some("nodes_name_key")), "name taken"),
            (unique("UNIQUE constraint failed: nodes.name", None), "name taken"),
            (unique("UNIQUE constraint failed: index 'ports_address_key'", None), "mac taken"),
            (unique("UNIQUE constraint failed: nodes.uuid", None), "Node n1 already exists."),
        ];
        for (err, want) in cases {
            assert_eq!(
                public_error(err, &node_ctx()),
                PublicError::AlreadyExists { message: want.into() }
            );
        }
    }

    #[test]
    fn test_mapping_of_other_errors() {
        let ctx = node_ctx();
        assert_eq!(
            public_error(sqlx::Error::RowNotFound, &ctx),
            PublicError::not_found("Node", "n1")
        );
        let fk = db(Fake {
            message: "FOREIGN KEY constraint failed",
            code: Some("787"),
            constraint: None,
            kind: || ErrorKind::ForeignKeyViolation,
        });
        assert_eq!(public_error(fk, &ctx), PublicError::not_found("Node", "parent"));
        assert!(matches!(
            public_error(sqlx::Error::PoolTimedOut, &ctx),
            PublicError::Unavailable { .. }
        ));
        let serialization = db(Fake {
            message: "could not serialize access",
            code: Some("40001"),
            constraint: None,
            kind: || ErrorKind::Other,
        });
        assert!(is_retryable(&serialization));
        let e = public_error(serialization, &ctx);
        assert!(matches!(e, PublicError::Unavailable { .. }) && e.retryable());
        let deadlock = db(Fake {
            message: "deadlock",
            code: Some("40P01"),
            constraint: None,
            kind: || ErrorKind::Other,
        });
        assert!(is_retryable(&deadlock));
        let syntax = db(Fake {
            message: "syntax error at x",
            code: Some("42601"),
            constraint: None,
            kind: || ErrorKind::Other,
        });
        assert!(!is_retryable(&syntax));
        let e = public_error(syntax, &ctx);
        assert!(
            matches!(&e, PublicError::Internal { internal } if internal.contains("syntax error"))
        );
        assert_eq!(e.to_string(), "An internal error occurred.", "details stay internal");
        // A numeric code from a non-SQLite driver is not read as an SQLite result code.
        let numeric =
            db(Fake { message: "x", code: Some("5"), constraint: None, kind: || ErrorKind::Other });
        assert!(!is_retryable(&numeric));
    }
}

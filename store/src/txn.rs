//! The one transaction helper. Every transaction goes through `transaction!`, which
//! runs the body again when the database reports a serialization failure, a deadlock or (on
//! SQLite) a busy database, with bounded attempts and backoff.
//!
//! On SQLite write transactions start with `BEGIN IMMEDIATE`: the write lock is taken up
//! front (waiting up to the busy timeout) instead of at the first write, where a deferred
//! transaction that already read a snapshot would fail with `SQLITE_BUSY_SNAPSHOT`.

use std::ops::ControlFlow;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use deploy::PublicError;
use sqlx::{Database, Pool, Transaction};

use crate::error::{Ctx, is_retryable, public_error};

/// How many times a transaction is tried before its conflict is reported as `Unavailable`.
const MAX_ATTEMPTS: usize = 5;

/// Pauses between the attempts of one transaction: 5 ms doubling to 40 ms, each stretched by
/// up to 100 % at random so racing retries spread out, and only `MAX_ATTEMPTS - 1` of them,
/// after which the conflict is reported (a store call never retries forever; a whole
/// transaction sleeps less than 150 ms in all).
pub(crate) fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(40))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(MAX_ATTEMPTS - 1)
        .build()
}

/// Why a transaction body stopped: a database error (maybe retryable) or a decision of the
/// body itself (e.g. a stale generation), which is never retried.
#[derive(Debug)]
pub(crate) enum TxnError {
    Db(sqlx::Error),
    Public(PublicError),
}

impl From<sqlx::Error> for TxnError {
    fn from(e: sqlx::Error) -> Self {
        TxnError::Db(e)
    }
}

impl From<PublicError> for TxnError {
    fn from(e: PublicError) -> Self {
        TxnError::Public(e)
    }
}

/// Run `$body` (a block evaluating to `Result<T, TxnError>`, with `$conn: &mut Connection`
/// in scope) in a transaction on `$pool` and commit; run it again on a retryable database
/// error. Evaluates to `Result<T, PublicError>`, database errors mapped with `$ctx`.
///
/// A macro rather than a function taking an async closure: the futures of async closures
/// over a borrowed connection are not provably `Send` (a higher-ranked lifetime limitation),
/// and every store future must be `Send` to be spawned.
macro_rules! transaction {
    ($pool:expr, $ctx:expr, |$conn:ident| $body:block) => {{
        let pool = $pool;
        let mut pauses = $crate::txn::backoff();
        loop {
            let res: Result<_, $crate::txn::TxnError> = async {
                let mut tx = $crate::txn::begin(pool).await?;
                let value = {
                    let $conn = &mut *tx;
                    // `return` in the body leaves this block, not the caller.
                    let r: Result<_, $crate::txn::TxnError> = async { $body }.await;
                    r?
                };
                // Dropping `tx` on an error above rolls it back.
                tx.commit().await?;
                Ok(value)
            }
            .await;
            match $crate::txn::outcome(res, &mut pauses, $ctx) {
                std::ops::ControlFlow::Break(done) => break done,
                std::ops::ControlFlow::Continue(pause) => tokio::time::sleep(pause).await,
            }
        }
    }};
}
pub(crate) use transaction;

/// Begin a write transaction: `BEGIN IMMEDIATE` on SQLite, `BEGIN` (read committed) on
/// PostgreSQL.
pub(crate) async fn begin<DB: Database>(
    pool: &Pool<DB>,
) -> Result<Transaction<'static, DB>, sqlx::Error> {
    if DB::NAME == "SQLite" { pool.begin_with("BEGIN IMMEDIATE").await } else { pool.begin().await }
}

/// What to do after an attempt: finish with a result, or retry after the next of `pauses`
/// (from [`backoff`]); a retryable error is reported once they run out.
pub(crate) fn outcome<T>(
    res: Result<T, TxnError>,
    pauses: &mut impl Iterator<Item = Duration>,
    ctx: &Ctx,
) -> ControlFlow<Result<T, PublicError>, Duration> {
    match res {
        Ok(v) => ControlFlow::Break(Ok(v)),
        Err(TxnError::Public(e)) => ControlFlow::Break(Err(e)),
        Err(TxnError::Db(e)) if is_retryable(&e) => match pauses.next() {
            Some(pause) => {
                tracing::debug!(error = %e, retry_in = ?pause, "retrying transaction");
                ControlFlow::Continue(pause)
            }
            None => ControlFlow::Break(Err(public_error(e, ctx))),
        },
        Err(TxnError::Db(e)) => ControlFlow::Break(Err(public_error(e, ctx))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_grows_and_is_bounded() {
        for _ in 0..100 {
            let pauses: Vec<Duration> = backoff().collect();
            assert_eq!(pauses.len(), MAX_ATTEMPTS - 1, "{pauses:?}");
            assert!(pauses[0] >= Duration::from_millis(5) && pauses[0] < Duration::from_millis(10));
            assert!(pauses[3] >= Duration::from_millis(40), "{pauses:?}");
            assert!(pauses.iter().all(|p| *p < Duration::from_millis(80)), "{pauses:?}");
            assert!(pauses.iter().sum::<Duration>() < Duration::from_millis(150), "{pauses:?}");
        }
    }

    #[test]
    fn test_outcome_retries_only_database_conflicts() {
        let ctx = Ctx::new("Node", "n1");
        let locked = TxnError::Public(PublicError::conflict("stale"));
        let mut pauses = backoff();
        assert_eq!(
            outcome::<()>(Err(locked), &mut pauses, &ctx),
            ControlFlow::Break(Err(PublicError::conflict("stale")))
        );
        assert_eq!(outcome(Ok(5), &mut pauses, &ctx), ControlFlow::Break(Ok(5)));
        // Not retryable: mapped at once.
        assert_eq!(
            outcome::<()>(Err(TxnError::Db(sqlx::Error::RowNotFound)), &mut pauses, &ctx),
            ControlFlow::Break(Err(PublicError::not_found("Node", "n1")))
        );
        // None of that used up a retry.
        assert_eq!(pauses.count(), MAX_ATTEMPTS - 1);
    }

    /// A PostgreSQL serialization failure, without a database.
    fn serialization_failure() -> sqlx::Error {
        crate::error::fake::db(crate::error::fake::Fake {
            message: "could not serialize access",
            code: Some("40001"),
            constraint: None,
            kind: || sqlx::error::ErrorKind::Other,
        })
    }

    #[test]
    fn test_outcome_gives_up_after_max_attempts() {
        let ctx = Ctx::new("Node", "n1");
        let conflict = || TxnError::Db(serialization_failure());
        let mut pauses = backoff();
        for _ in 1..MAX_ATTEMPTS {
            assert!(matches!(
                outcome::<()>(Err(conflict()), &mut pauses, &ctx),
                ControlFlow::Continue(_)
            ));
        }
        assert_eq!(
            outcome::<()>(Err(conflict()), &mut pauses, &ctx),
            ControlFlow::Break(Err(PublicError::unavailable(
                "The database is busy, please retry."
            )))
        );
    }
}

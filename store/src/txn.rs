//! The one transaction helper. Every transaction goes through `transaction!`, which
//! runs the body again when the database reports a serialization failure, a deadlock or (on
//! SQLite) a busy database, with bounded attempts and backoff.
//!
//! On SQLite write transactions start with `BEGIN IMMEDIATE`: the write lock is taken up
//! front (waiting up to the busy timeout) instead of at the first write, where a deferred
//! transaction that already read a snapshot would fail with `SQLITE_BUSY_SNAPSHOT`.

use std::ops::ControlFlow;
use std::time::Duration;

use deploy::PublicError;
use sqlx::{Database, Pool, Transaction};

use crate::error::{Ctx, is_retryable, public_error};

/// How many times a transaction is tried before its conflict is reported as `Unavailable`.
const MAX_ATTEMPTS: u32 = 5;
/// First backoff; doubled per attempt and jittered.
const BASE_BACKOFF: Duration = Duration::from_millis(5);

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
        let mut attempt: u32 = 1;
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
            match $crate::txn::outcome(res, attempt, $ctx) {
                std::ops::ControlFlow::Break(done) => break done,
                std::ops::ControlFlow::Continue(pause) => {
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
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

/// What to do after an attempt: finish with a result, or retry after a pause.
pub(crate) fn outcome<T>(
    res: Result<T, TxnError>,
    attempt: u32,
    ctx: &Ctx,
) -> ControlFlow<Result<T, PublicError>, Duration> {
    match res {
        Ok(v) => ControlFlow::Break(Ok(v)),
        Err(TxnError::Public(e)) => ControlFlow::Break(Err(e)),
        Err(TxnError::Db(e)) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
            tracing::debug!(attempt, error = %e, "retrying transaction");
            ControlFlow::Continue(backoff(attempt))
        }
        Err(TxnError::Db(e)) => ControlFlow::Break(Err(public_error(e, ctx))),
    }
}

/// Exponential backoff with jitter so that racing retries spread out.
fn backoff(attempt: u32) -> Duration {
    let base = BASE_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1));
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 8;
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_grows_and_is_bounded() {
        assert!(backoff(1) < Duration::from_millis(13));
        assert!(backoff(4) >= Duration::from_millis(40));
        assert!(backoff(MAX_ATTEMPTS) < Duration::from_millis(100));
    }

    #[test]
    fn test_outcome_retries_only_database_conflicts() {
        let ctx = Ctx::new("Node", "n1");
        let locked = TxnError::Public(PublicError::conflict("stale"));
        assert_eq!(
            outcome::<()>(Err(locked), 1, &ctx),
            ControlFlow::Break(Err(PublicError::conflict("stale")))
        );
        assert_eq!(outcome(Ok(5), 1, &ctx), ControlFlow::Break(Ok(5)));
        // Not retryable: mapped at once.
        assert_eq!(
            outcome::<()>(Err(TxnError::Db(sqlx::Error::RowNotFound)), 1, &ctx),
            ControlFlow::Break(Err(PublicError::not_found("Node", "n1")))
        );
    }
}

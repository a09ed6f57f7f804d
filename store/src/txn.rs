//! The one transaction helper. Every multi-statement write goes through [`transaction`], which
//! runs the body again when the database reports a serialization failure, a deadlock or (on
//! SQLite) a busy database, with bounded attempts and backoff.
//!
//! On SQLite write transactions start with `BEGIN IMMEDIATE`: the write lock is taken up
//! front (waiting up to the busy timeout) instead of at the first write, where a deferred
//! transaction that already read a snapshot would fail with `SQLITE_BUSY_SNAPSHOT`.

use std::time::Duration;

use deploy::PublicError;
use sqlx::{Database, Pool};

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

/// Run `body` in a transaction on `pool` and commit; retry the whole body on a retryable
/// database error. Errors are mapped with `ctx`.
pub(crate) async fn transaction<DB, T, F>(
    pool: &Pool<DB>,
    ctx: &Ctx,
    mut body: F,
) -> Result<T, PublicError>
where
    DB: Database,
    F: AsyncFnMut(&mut DB::Connection) -> Result<T, TxnError>,
{
    let mut attempt = 1;
    loop {
        match attempt_once(pool, &mut body).await {
            Ok(v) => return Ok(v),
            Err(TxnError::Public(e)) => return Err(e),
            Err(TxnError::Db(e)) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "retrying transaction");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(TxnError::Db(e)) => return Err(public_error(e, ctx)),
        }
    }
}

async fn attempt_once<DB, T, F>(pool: &Pool<DB>, body: &mut F) -> Result<T, TxnError>
where
    DB: Database,
    F: AsyncFnMut(&mut DB::Connection) -> Result<T, TxnError>,
{
    let mut tx = if DB::NAME == "SQLite" {
        pool.begin_with("BEGIN IMMEDIATE").await?
    } else {
        pool.begin().await?
    };
    // On error the transaction is dropped, which rolls it back.
    let value = body(&mut *tx).await?;
    tx.commit().await?;
    Ok(value)
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
}

//! Column codecs shared by both backends.
//!
//! UUIDs are native `uuid` on PostgreSQL and hyphenated lower-case text on SQLite (so they read
//! well in the `sqlite3` shell and sort like PostgreSQL's byte order). JSON goes through
//! `sqlx::types::Json`, which is JSONB on PostgreSQL and TEXT on SQLite. Timestamps are
//! truncated to microseconds before they are written, PostgreSQL's precision, so a value
//! read back equals the value written on both backends.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

/// A UUID column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbUuid(pub Uuid);

impl Type<Postgres> for DbUuid {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbUuid {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbUuid {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <Uuid as Decode<'r, Postgres>>::decode(value).map(DbUuid)
    }
}

impl Type<Sqlite> for DbUuid {
    fn type_info() -> SqliteTypeInfo {
        <uuid::fmt::Hyphenated as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for DbUuid {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <uuid::fmt::Hyphenated as Encode<'_, Sqlite>>::encode_by_ref(&self.0.hyphenated(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbUuid {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <uuid::fmt::Hyphenated as Decode<'r, Sqlite>>::decode(value).map(|h| DbUuid(h.into_uuid()))
    }
}

impl From<deploy::NodeId> for DbUuid {
    fn from(id: deploy::NodeId) -> Self {
        DbUuid(id.0)
    }
}

impl From<deploy::PortId> for DbUuid {
    fn from(id: deploy::PortId) -> Self {
        DbUuid(id.0)
    }
}

impl From<Uuid> for DbUuid {
    fn from(id: Uuid) -> Self {
        DbUuid(id)
    }
}

/// A timestamp at the precision both backends keep.
pub(crate) fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// Now, at the precision both backends keep.
pub(crate) fn now() -> DateTime<Utc> {
    ts(Utc::now())
}

//! Dynamically built SQL: text with numbered `$n` placeholders (accepted by both backends)
//! plus the values to bind, for listings whose filters vary. Only fixed fragments and column
//! names from enums go into the text; every value is bound.

use crate::types::DbUuid;

/// A bind value for dynamically built queries.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Bool(bool),
    Int(i64),
    Uuid(DbUuid),
}

/// Bind every `Arg` in order.
macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                $crate::sql::Arg::Text(s) => q.bind(s.clone()),
                $crate::sql::Arg::Bool(b) => q.bind(*b),
                $crate::sql::Arg::Int(i) => q.bind(*i),
                $crate::sql::Arg::Uuid(u) => q.bind(*u),
            };
        }
        q
    }};
}
pub(crate) use bind_args;

/// SQL under construction with numbered placeholders.
#[derive(Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) args: Vec<Arg>,
}

impl Sql {
    /// Append `arg` and return its placeholder (`$n`).
    pub(crate) fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// Append ` AND cond`.
    pub(crate) fn and(&mut self, cond: &str) {
        self.text.push_str(" AND ");
        self.text.push_str(cond);
    }

    /// Append ` AND column = $n` when `value` is set.
    pub(crate) fn eq_text(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            let p = self.arg(Arg::Text(v.clone()));
            self.and(&format!("{column} = {p}"));
        }
    }
}

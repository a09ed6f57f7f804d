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

    /// Append ` AND text_column IN ($a, $b, …)` when `values` is not empty.
    pub(crate) fn in_text(&mut self, column: &str, values: &[String]) {
        if !values.is_empty() {
            let ps: Vec<String> = values.iter().map(|v| self.arg(Arg::Text(v.clone()))).collect();
            self.and(&format!("{column} IN ({})", ps.join(", ")));
        }
    }

    /// Append ` AND node_uuid IN (nodes whose node_column is one of values)` when `values`
    /// is not empty: a port's or resource's filter on a field of its node.
    pub(crate) fn node_field_in(&mut self, node_column: &str, values: &[String]) {
        if !values.is_empty() {
            let ps: Vec<String> = values.iter().map(|v| self.arg(Arg::Text(v.clone()))).collect();
            self.and(&format!(
                "node_uuid IN (SELECT uuid FROM nodes WHERE {node_column} IN ({}))",
                ps.join(", ")
            ));
        }
    }

    /// Append ` AND (owner = $p OR lessee = $p)` for a node row, when `project` is set.
    pub(crate) fn project_node(&mut self, project: &Option<String>) {
        if let Some(v) = project {
            let (o, l) = (self.arg(Arg::Text(v.clone())), self.arg(Arg::Text(v.clone())));
            self.and(&format!("(owner = {o} OR lessee = {l})"));
        }
    }

    /// Append ` AND node_uuid IN (nodes owned or leased by project)`, when `project` is set.
    pub(crate) fn project_of_node(&mut self, project: &Option<String>) {
        if let Some(v) = project {
            let (o, l) = (self.arg(Arg::Text(v.clone())), self.arg(Arg::Text(v.clone())));
            self.and(&format!(
                "node_uuid IN (SELECT uuid FROM nodes WHERE owner = {o} OR lessee = {l})"
            ));
        }
    }

    /// Append ` AND description contains text` (PostgreSQL's `strpos`, SQLite's `instr`;
    /// both find a literal substring).
    pub(crate) fn contains(&mut self, pg: bool, column: &str, text: &str) {
        let p = self.arg(Arg::Text(text.to_owned()));
        let f = if pg { "strpos" } else { "instr" };
        self.and(&format!("{f}({column}, {p}) > 0"));
    }
}

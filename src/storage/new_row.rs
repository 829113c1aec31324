//! A row to insert, as plain columns and values: what a write that only inserts (CreateTodo)
//! hands to the idempotency layer, which runs it on its own or in one statement with the
//! claim of the call's key.

use sea_orm::{DbBackend, Statement, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    table: &'static str,
    columns: Vec<&'static str>,
    values: Vec<Value>,
}

impl NewRow {
    /// `columns` and `values` in the same order, one value per column.
    pub(super) fn new(table: &'static str, columns: Vec<&'static str>, values: Vec<Value>) -> Self {
        debug_assert_eq!(columns.len(), values.len());
        Self {
            table,
            columns,
            values,
        }
    }

    pub fn table(&self) -> &'static str {
        self.table
    }

    /// The quoted column names, comma-separated, for an INSERT's column list.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|column| format!("\"{column}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Numbered placeholders for the values, from `first`: `$first, ...` (PostgreSQL; SQLite
    /// takes `$N` as the N-th parameter too).
    pub fn numbered_placeholders(&self, first: usize) -> String {
        (first..first + self.values.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `response` (an encoded response) carries one of the row's UUIDs in its text
    /// form: a freshly generated id, so no other call's response can be equal to it.
    pub fn is_named_in(&self, response: &[u8]) -> bool {
        self.values.iter().any(|value| match value {
            Value::Uuid(Some(uuid)) => {
                let text = uuid.hyphenated().to_string();
                response
                    .windows(text.len())
                    .any(|window| window == text.as_bytes())
            }
            _ => false,
        })
    }

    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The row's INSERT, on its own.
    pub fn insert_statement(self, backend: DbBackend) -> Statement {
        let placeholders = match backend {
            DbBackend::Postgres => self.numbered_placeholders(1),
            _ => vec!["?"; self.values.len()].join(", "),
        };
        let sql = format!(
            "INSERT INTO \"{}\" ({}) VALUES ({placeholders})",
            self.table,
            self.column_list()
        );
        Statement::from_sql_and_values(backend, sql, self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> NewRow {
        NewRow::new(
            "things",
            vec!["id", "name"],
            vec![Value::from(7_i64), Value::from("seven")],
        )
    }

    #[test]
    fn insert_statement_uses_each_backends_placeholders() {
        let postgres = row().insert_statement(DbBackend::Postgres);
        assert_eq!(
            postgres.sql,
            r#"INSERT INTO "things" ("id", "name") VALUES ($1, $2)"#
        );
        let sqlite = row().insert_statement(DbBackend::Sqlite);
        assert_eq!(
            sqlite.sql,
            r#"INSERT INTO "things" ("id", "name") VALUES (?, ?)"#
        );
        assert_eq!(
            sqlite.values.map(|values| values.0),
            Some(vec![Value::from(7_i64), Value::from("seven")])
        );
    }

    #[test]
    fn a_response_names_the_row_by_its_uuid() {
        let id = uuid::Uuid::now_v7();
        let row = NewRow::new("things", vec!["id"], vec![Value::from(id)]);
        assert!(row.is_named_in(format!("\n$${id}\x12").as_bytes()));
        assert!(!row.is_named_in(b"a response of another call"));
    }

    #[test]
    fn placeholders_can_start_after_other_parameters() {
        assert_eq!(row().numbered_placeholders(8), "$8, $9");
    }
}

//! Configuration: every setting is a command-line flag and an environment variable, and
//! `todo-server --help` is the reference.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::storage::DatabaseSettings;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-server",
    version,
    about = "TodoService: a gRPC TODO service whose every write is safe to retry"
)]
pub struct Config {
    /// Address to serve gRPC on (plaintext HTTP/2). Port 0 picks a free port.
    #[arg(long, env = "TODO_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Database URL: `sqlite:<file>` (created if missing) or `postgres://user@host:port/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:todo.db")]
    pub database_url: String,

    /// How long an idempotency key is remembered (e.g. `24h`, `90m`). A key older than this
    /// behaves as new.
    #[arg(long, env = "TODO_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,

    /// Most database connections in the pool (on SQLite: readers; writes use one connection).
    #[arg(long, env = "TODO_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

    /// Longest wait to connect to the database, to get a pooled connection, and (PostgreSQL)
    /// for one statement. Past it the RPC fails with UNAVAILABLE.
    #[arg(long, env = "TODO_DB_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,

    /// Apply pending database migrations at start-up (`true` or `false`).
    #[arg(long, env = "TODO_RUN_MIGRATIONS", default_value_t = true, action = ArgAction::Set)]
    pub run_migrations: bool,

    /// How often the health service checks that the database answers.
    #[arg(long, env = "TODO_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,
}

impl Config {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            pool_size: self.db_pool_size,
            timeout: self.db_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::try_parse_from(["todo-server"]).unwrap();
        assert_eq!(config.listen_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(config.idempotency_retention, Duration::from_secs(24 * 3600));
        assert!(config.run_migrations);
    }

    #[test]
    fn flags_override_defaults() {
        let config = Config::try_parse_from([
            "todo-server",
            "--listen-addr",
            "127.0.0.1:0",
            "--idempotency-retention",
            "90m",
            "--run-migrations",
            "false",
        ])
        .unwrap();
        assert_eq!(config.listen_addr.port(), 0);
        assert_eq!(config.idempotency_retention, Duration::from_secs(90 * 60));
        assert!(!config.run_migrations);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}

//! A PostgreSQL cluster of a test's own (initdb in a temporary directory, trust auth, its own
//! port on 127.0.0.1), for tests that restart, reconfigure or kill PostgreSQL without
//! disturbing the shared server.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::net::TcpListener;
use tokio::process::Command;

/// A PostgreSQL cluster of the test's own, made with initdb in a temporary directory and run
/// as the `postgres` user (initdb refuses root).
pub struct ThrowawayCluster {
    /// Holds the data directory, the socket and the log.
    dir: tempfile::TempDir,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl ThrowawayCluster {
    pub async fn start() -> Self {
        let dir = postgres_owned_tempdir().await;
        let port = free_port().await;
        let data = dir.path().join("data");
        run_as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            false,
        )
        .await;
        let cluster = Self { dir, port };
        cluster.pg_ctl_start().await;
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ],
            false,
        )
        .await;
    }

    pub async fn pg_ctl_stop(&self) {
        run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            false,
        )
        .await;
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub async fn run_as_postgres(program: &str, args: &[&str], as_root: bool) {
    let mut command = if as_root {
        Command::new(program)
    } else {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    };
    let output = command
        .args(args)
        .output()
        .await
        .unwrap_or_else(|err| panic!("run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A temporary directory owned by `postgres` (initdb, Patroni and PgBouncer refuse root).
pub async fn postgres_owned_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    run_as_postgres(
        "chown",
        &["postgres", &dir.path().display().to_string()],
        true,
    )
    .await;
    dir
}

pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

//! The real `todo-server` binary as a child process: started on port 0, killed with SIGKILL,
//! started again on the same address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Failure;

/// A running server.
pub struct Server {
    /// The binary.
    bin: PathBuf,
    /// Its database.
    database_url: String,
    /// The process.
    child: Child,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
}

async fn spawn(
    bin: &PathBuf,
    database_url: &str,
    listen: &str,
) -> Result<(Child, SocketAddr), Failure> {
    let mut child = Command::new(bin)
        .args(["--listen-addr", listen, "--database-url", database_url])
        .args(["--metrics-enabled", "false", "--log-format", "json"])
        .args(["--db-timeout", "2s", "--health-check-interval", "200ms"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn,todo_service::startup=info")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| Failure(format!("start {bin:?}: {err}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Failure("the server's stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| Failure("the server did not start within 30 s".into()))?
            .map_err(|err| Failure(format!("read the server's stdout: {err}")))?
            .ok_or_else(|| Failure("the server exited during start-up".into()))?;
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
            && json["message"] == "serving gRPC"
            && let Some(Ok(addr)) = json["addr"].as_str().map(str::parse)
        {
            break addr;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

impl Server {
    /// Starts `bin` on `database_url`, on any free port of 127.0.0.1.
    pub async fn start(bin: PathBuf, database_url: &str) -> Result<Self, Failure> {
        let (child, addr) = spawn(&bin, database_url, "127.0.0.1:0").await?;
        Ok(Self {
            bin,
            database_url: database_url.to_owned(),
            child,
            addr,
        })
    }

    /// SIGKILL: calls in flight get no answer, whatever they committed.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the server again on the same address.
    pub async fn restart(&mut self) -> Result<(), Failure> {
        let (child, addr) = spawn(&self.bin, &self.database_url, &self.addr.to_string()).await?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }
}

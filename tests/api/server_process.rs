//! `ServerProcess`: the real `todo-server` binary as a child process, for tests that need what
//! only a process has (signals, SIGKILL, its own stdout). It logs JSON; start-up waits for the
//! `serving gRPC` line, and every later line can be read with [`ServerProcess::next_log_line`].

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// A running `todo-server` process.
pub struct ServerProcess {
    child: Child,
    /// The gRPC address it serves on (from its `serving gRPC` log line).
    pub addr: SocketAddr,
    /// The log lines it printed up to and including `serving gRPC`.
    pub startup_log: Vec<String>,
    /// The lines it printed since, in order.
    log: mpsc::UnboundedReceiver<String>,
    /// How it was started, to start it again.
    database_url: String,
    args: Vec<String>,
    rust_log: String,
}

impl ServerProcess {
    /// Starts `todo-server` on `database_url`, listening on `listen` (port 0: any), with the
    /// test defaults (no metrics, JSON logs, 2 s database timeout, health checks every 200 ms),
    /// then `args`; `RUST_LOG` is `warn,todo_service::startup=info`.
    pub async fn start(database_url: &str, listen: &str, args: &[&str]) -> Self {
        Self::start_logging(
            database_url,
            listen,
            args,
            "warn,todo_service::startup=info",
        )
        .await
    }

    /// Like [`start`](Self::start), with `RUST_LOG` set to `rust_log`.
    pub async fn start_logging(
        database_url: &str,
        listen: &str,
        args: &[&str],
        rust_log: &str,
    ) -> Self {
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.splice(0..0, ["--listen-addr".to_owned(), listen.to_owned()]);
        let (child, addr, startup_log, log) = spawn(database_url, &args, rust_log).await;
        Self {
            child,
            addr,
            startup_log,
            log,
            database_url: database_url.to_owned(),
            args,
            rust_log: rust_log.to_owned(),
        }
    }

    /// The process id.
    #[allow(dead_code)] // used by tests/hostile.rs
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// The resident set size of the process, in KiB (from /proc).
    #[allow(dead_code)] // used by tests/hostile.rs
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// CPU time the process has used (user + system), from /proc.
    #[allow(dead_code)] // used by tests/hostile.rs
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("the server's /proc stat");
        // Fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        // USER_HZ is 100 on Linux.
        std::time::Duration::from_millis(ticks * 10)
    }

    /// A channel to the server (connects on first use).
    pub fn channel(&self) -> Channel {
        channel_to(self.addr)
    }

    /// The next line the server logs, or None if it printed nothing more within `wait` (or
    /// exited).
    pub async fn next_log_line(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.log.recv())
            .await
            .ok()
            .flatten()
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the server is running").to_string();
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}").as_str(), pid.as_str()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIG{name} sent to {pid}");
    }

    /// Waits at most `wait` for the process to exit.
    pub async fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(wait, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the server"))
    }

    /// The `addr` field of the start-up line whose message is `message`.
    pub fn logged_addr(&self, message: &str) -> Option<SocketAddr> {
        self.startup_log.iter().find_map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            (json["message"] == message).then(|| json["addr"].as_str()?.parse().ok())?
        })
    }

    /// SIGTERM, then waits (at most 30 s) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("the server is running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", pid.as_str()])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "SIGTERM sent to {pid}");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits after SIGTERM")
            .expect("wait for the server")
    }

    /// Starts the server again with the same database, address and arguments.
    pub async fn restart(&mut self) {
        let listen = self.addr.to_string();
        self.args[1] = listen;
        let (child, addr, startup_log, log) =
            spawn(&self.database_url, &self.args, &self.rust_log).await;
        self.child = child;
        self.addr = addr;
        self.startup_log = startup_log;
        self.log = log;
    }
}

async fn spawn(
    database_url: &str,
    args: &[String],
    rust_log: &str,
) -> (
    Child,
    SocketAddr,
    Vec<String>,
    mpsc::UnboundedReceiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_todo-server"))
        .args(["--metrics-enabled", "false", "--log-format", "json"])
        .args(["--database-url", database_url])
        .args(["--db-timeout", "2s", "--health-check-interval", "200ms"])
        // Tests stop servers often; the drain is tested where it is asked for.
        .args(if args.iter().any(|arg| arg == "--shutdown-drain") {
            &[][..]
        } else {
            &["--shutdown-drain", "0s"][..]
        })
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start todo-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut startup_log = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the server starts in time")
            .expect("read the server's stdout")
            .unwrap_or_else(|| panic!("the server exited during start-up: {startup_log:#?}"));
        let json = serde_json::from_str::<serde_json::Value>(&line).ok();
        startup_log.push(line);
        if let Some(json) = json
            && json["message"] == "serving gRPC"
        {
            break json["addr"]
                .as_str()
                .expect("addr")
                .parse()
                .expect("an address");
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    let (sender, log) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = sender.send(line);
        }
    });
    (child, addr, startup_log, log)
}

/// A channel to `addr` that connects on first use, as a load client would hold it: 500 ms to
/// connect, 10 s per call.
pub fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

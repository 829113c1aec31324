//! A PostgreSQL cluster of the scenario's own (initdb in a temporary directory, trust auth,
//! fsync off), so stopping it disturbs nobody else. Run as the `postgres` user when this
//! process is root (initdb refuses root).

use std::path::PathBuf;
use std::process::Command;

use crate::Failure;

/// A running throwaway cluster; stopped and removed on drop.
pub struct Cluster {
    /// The temporary directory holding the data directory, socket and log.
    dir: PathBuf,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(program: &str, args: &[&str]) -> Result<(), Failure> {
    let mut command = if is_root() && program != "chown" {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .map_err(|err| Failure(format!("run {program}: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Failure(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn free_port() -> Result<u16, Failure> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| Failure(format!("bind: {err}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| Failure(format!("local address: {err}")))
}

impl Cluster {
    /// initdb + start.
    pub fn start() -> Result<Self, Failure> {
        let dir = std::env::temp_dir().join(format!("todo-faults-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).map_err(|err| Failure(format!("{dir:?}: {err}")))?;
        if is_root() {
            run("chown", &["postgres", &dir.display().to_string()])?;
        }
        let cluster = Self {
            dir,
            port: free_port()?,
        };
        run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts it (again), waiting until it accepts connections.
    pub fn pg_ctl_start(&self) -> Result<(), Failure> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log").display().to_string();
        run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    /// Stops it (fast: open sessions are ended), waiting until it is down.
    pub fn pg_ctl_stop(&self) -> Result<(), Failure> {
        run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! PostgreSQL failover with the real components users run (Debian's packages, installed by
//! `.ci/run`): etcd, two Patroni nodes in synchronous mode, HAProxy in TCP mode routing to the
//! primary by Patroni's `/primary` check, and two server replicas through it, under keyed load
//! from the crate's retrying client. A `patronictl switchover`, then kill -9 of the new leader
//! (Patroni and PostgreSQL): every acknowledged key has exactly one todo with the acknowledged
//! id, no duplicates, only UNAVAILABLE seen, and the service is back by itself within 20 s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;

use crate::cluster::{free_port, postgres_owned_tempdir, run_as_postgres};
use crate::faults::{Figures, audit, create_with_retries, print_figures};
use crate::helpers::{Backend, TestDatabase};
use crate::server_process::ServerProcess;

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// etcd, two Patroni nodes and HAProxy, in a temporary directory, all on 127.0.0.1.
struct PatroniCluster {
    /// Configurations, data directories and logs (owned by `postgres`).
    dir: tempfile::TempDir,
    /// etcd (runs as root).
    etcd: Child,
    /// HAProxy in front of the nodes' PostgreSQL (started once the cluster is up).
    haproxy: Option<Child>,
    /// The port HAProxy serves the primary on.
    primary_port: u16,
    /// The nodes: Patroni REST port and PostgreSQL port of each.
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    rest_port: u16,
    config: PathBuf,
    data: PathBuf,
    /// `runuser -u postgres -- patroni <config>`.
    process: Option<Child>,
}

fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    command
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("start {command:?}: {err} (.ci/run installs it)"))
}

impl PatroniCluster {
    async fn start() -> Self {
        let dir = postgres_owned_tempdir().await;
        let (etcd_port, etcd_peer) = (free_port().await, free_port().await);
        let etcd = spawn_logged(
            Command::new("etcd")
                .args(["--name", "e0", "--data-dir"])
                .arg(dir.path().join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
                ))
                .arg(format!("--initial-cluster=e0=http://127.0.0.1:{etcd_peer}")),
            &dir.path().join("etcd.log"),
        );
        wait_for_port(etcd_port, Duration::from_secs(20), "etcd").await;

        let scope = format!("todo-{}", uuid::Uuid::now_v7().simple());
        let mut nodes = Vec::new();
        let mut pg_ports = Vec::new();
        for i in 0..2 {
            let (rest_port, pg_port) = (free_port().await, free_port().await);
            let name = format!("node{i}");
            let config = dir.path().join(format!("{name}.yml"));
            let data = dir.path().join(format!("data{i}"));
            std::fs::write(
                &config,
                patroni_config(
                    &scope,
                    &name,
                    rest_port,
                    pg_port,
                    etcd_port,
                    dir.path(),
                    &data,
                ),
            )
            .expect("write the Patroni configuration");
            nodes.push(Node {
                name,
                rest_port,
                config,
                data,
                process: None,
            });
            pg_ports.push(pg_port);
        }
        run_as_postgres(
            "chown",
            &["-R", "postgres", &dir.path().display().to_string()],
            true,
        )
        .await;
        // The first node bootstraps the cluster; the second then copies it.
        let mut cluster = Self {
            primary_port: free_port().await,
            haproxy: None,
            dir,
            etcd,
            nodes,
        };
        cluster.start_node(0);
        cluster
            .wait_for_role(0, "/primary", Duration::from_secs(60))
            .await;
        cluster.start_node(1);
        cluster
            .wait_for_role(1, "/sync", Duration::from_secs(60))
            .await;

        let haproxy_config = cluster.dir.path().join("haproxy.cfg");
        let servers: String = cluster
            .nodes
            .iter()
            .zip(&pg_ports)
            .map(|(node, pg_port)| {
                format!(
                    "  server {} 127.0.0.1:{pg_port} check port {}\n",
                    node.name, node.rest_port
                )
            })
            .collect();
        std::fs::write(
            &haproxy_config,
            format!(
                "global\n  maxconn 500\n\
                 defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30m\n  timeout server 30m\n\
                 listen primary\n  bind 127.0.0.1:{}\n  option httpchk GET /primary\n  http-check expect status 200\n\
                 \x20 default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}",
                cluster.primary_port
            ),
        )
        .expect("write haproxy.cfg");
        cluster.haproxy = Some(spawn_logged(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&haproxy_config),
            &cluster.dir.path().join("haproxy.log"),
        ));
        wait_for_port(cluster.primary_port, Duration::from_secs(10), "haproxy").await;
        cluster.wait_until_only_the_primary_is_routed().await;
        cluster
    }

    /// HAProxy takes its servers for up until their first checks fail: wait until several
    /// connections in a row through it reach the primary.
    async fn wait_until_only_the_primary_is_routed(&self) {
        let started = Instant::now();
        let mut in_a_row = 0;
        while in_a_row < 8 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "HAProxy still routes to a standby"
            );
            let output = Command::new("psql")
                .arg(self.url())
                .args(["-At", "-c", "SELECT pg_is_in_recovery()"])
                .output()
                .await
                .expect("run psql");
            if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "f" {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn start_node(&mut self, i: usize) {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let node = &mut self.nodes[i];
        node.process = Some(spawn_logged(
            Command::new("runuser")
                .args(["-u", "postgres", "--", "patroni"])
                .arg(&node.config),
            &log,
        ));
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    /// Whether node `i`'s Patroni answers 200 on `path` (`/primary`, `/sync`, `/health`).
    async fn answers(&self, i: usize, path: &str) -> bool {
        let Ok(mut stream) =
            tokio::net::TcpStream::connect(("127.0.0.1", self.nodes[i].rest_port)).await
        else {
            return false;
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
    }

    async fn wait_for_role(&self, i: usize, path: &str, wait: Duration) {
        let started = Instant::now();
        while started.elapsed() < wait {
            if self.answers(i, path).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{} never answered 200 on {path}: {}",
            self.nodes[i].name,
            self.log_of(i)
        );
    }

    fn log_of(&self, i: usize) -> String {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    async fn leader(&self) -> usize {
        for _ in 0..100 {
            for i in 0..self.nodes.len() {
                if self.answers(i, "/primary").await {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no leader");
    }

    /// `patronictl switchover` from the leader to the other node.
    async fn switchover(&self) -> usize {
        let leader = self.leader().await;
        let candidate = 1 - leader;
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--", "patronictl", "-c"])
            .arg(&self.nodes[leader].config)
            .args(["switchover", "--force", "--leader"])
            .arg(&self.nodes[leader].name)
            .arg("--candidate")
            .arg(&self.nodes[candidate].name)
            .output()
            .await
            .expect("run patronictl");
        assert!(
            output.status.success(),
            "patronictl switchover: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        candidate
    }

    /// kill -9 of node `i`: its Patroni and its PostgreSQL (postmaster and backends), as a
    /// crashed machine would go.
    fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let _ = std::process::Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(format!("patroni {}", node.config.display()))
            .status();
        kill9_postgres(&node.data);
        if let Some(mut process) = node.process.take() {
            let _ = process.start_kill();
        }
    }
}

fn kill9_postgres(data: &Path) {
    let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pid_file.lines().next().map(str::trim).map(str::to_owned) else {
        return;
    };
    for (program, args) in [("pkill", ["-9", "-P"]), ("kill", ["-9", "--"])] {
        let _ = std::process::Command::new(program)
            .args(args)
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if let Some(haproxy) = self.haproxy.as_mut() {
            let _ = haproxy.start_kill();
        }
        let _ = self.etcd.start_kill();
    }
}

fn patroni_config(
    scope: &str,
    name: &str,
    rest_port: u16,
    pg_port: u16,
    etcd_port: u16,
    dir: &Path,
    data: &Path,
) -> String {
    format!(
        "scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        max_connections: 100
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {BIN_DIR}
  pgpass: {dir}/pgpass-{name}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: '{dir}'
",
        data = data.display(),
        dir = dir.display(),
    )
}

async fn wait_for_port(port: u16, wait: Duration, what: &str) {
    let started = Instant::now();
    while started.elapsed() < wait {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not listen on {port}");
}

/// Keyed creates from `tasks` tasks over `channels` until `stop`: acknowledged todos by title,
/// and the titles (their keys derived from them) of the creates that gave up.
async fn load_until(
    channels: &[Channel],
    tasks: usize,
    stop: &AtomicBool,
    figures: &Figures,
) -> (HashMap<String, todo_service::proto::Todo>, Vec<String>) {
    let runs = (0..tasks).map(|task| async move {
        let mut acknowledged = HashMap::new();
        let mut gave_up = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let title = format!("failover-{task}-{i}");
            let channel = channels[(task + i) % channels.len()].clone();
            let give_up = Instant::now() + Duration::from_secs(30);
            match create_with_retries(channel, title.clone(), key_of(&title), figures, give_up)
                .await
            {
                Some(written) => {
                    acknowledged.insert(title, written.value);
                }
                None => gave_up.push(title),
            }
            i += 1;
        }
        (acknowledged, gave_up)
    });
    let mut acknowledged = HashMap::new();
    let mut gave_up = Vec::new();
    for (acked, failed) in join_all(runs).await {
        acknowledged.extend(acked);
        gave_up.extend(failed);
    }
    (acknowledged, gave_up)
}

fn key_of(title: &str) -> String {
    format!("{title}-key")
}

/// How long until a keyed create through `channel` succeeds again.
async fn time_to_recover(channel: Channel, since: Instant, figures: &Figures) -> Duration {
    let title = format!("probe-{}", uuid::Uuid::now_v7().simple());
    let give_up = Instant::now() + Duration::from_secs(40);
    create_with_retries(channel, title.clone(), key_of(&title), figures, give_up)
        .await
        .expect("the service is back");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_switchover_and_leader_kill9_lose_and_duplicate_nothing_and_recover_alone() {
    let mut cluster = PatroniCluster::start().await;
    let url = cluster.url();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(ServerProcess::start(&url, "127.0.0.1:0", &[]).await);
    }
    let channels: Vec<Channel> = replicas.iter().map(ServerProcess::channel).collect();
    let figures = Arc::new(Figures::default());
    let stop = AtomicBool::new(false);

    let faults = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let switched = Instant::now();
        let new_leader = cluster.switchover().await;
        let after_switchover = time_to_recover(channels[0].clone(), switched, &figures).await;
        cluster
            .wait_for_role(1 - new_leader, "/sync", Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Instant::now();
        cluster.kill9(new_leader);
        let after_kill = time_to_recover(channels[1].clone(), killed, &figures).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        (after_switchover, after_kill)
    };
    let ((acknowledged, gave_up), (after_switchover, after_kill)) =
        tokio::join!(load_until(&channels, 8, &stop, &figures), faults);

    // A logical create that gave up is retried with its key now: replayed if it had committed.
    let mut acknowledged = acknowledged;
    for title in &gave_up {
        let give_up = Instant::now() + Duration::from_secs(30);
        let written = create_with_retries(
            channels[0].clone(),
            title.clone(),
            key_of(title),
            &figures,
            give_up,
        )
        .await
        .expect("a retry with its key after the failover");
        acknowledged.insert(title.clone(), written.value);
    }
    let db = TestDatabase::attach(Backend::Postgres, &url).await;
    let audit = audit(&db, &acknowledged).await;
    let logical = acknowledged.len();
    print_figures("patroni failover", logical, &figures, logical, audit);
    println!(
        "back after the switchover in {after_switchover:?}, after kill -9 of the leader in \
         {after_kill:?}; {} logical creates had given up and were retried",
        gave_up.len()
    );
    // The probes are rows too.
    let probes = db
        .scalar("SELECT COUNT(*) FROM todos WHERE title LIKE 'probe-%'")
        .await;
    assert_eq!(
        audit.0 - probes,
        logical as i64,
        "one row per logical create"
    );
    assert_eq!(audit.1, 0, "duplicates");
    assert_eq!(audit.2, 0, "acknowledged todos lost");
    let codes = figures.error_codes();
    assert!(
        codes.keys().all(|code| *code == Code::Unavailable),
        "only UNAVAILABLE seen: {codes:?}"
    );
    assert!(
        after_switchover < Duration::from_secs(20),
        "{after_switchover:?}"
    );
    assert!(after_kill < Duration::from_secs(20), "{after_kill:?}");
    drop(replicas);
    drop(cluster);
}

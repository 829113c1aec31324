//! `todo-faults`: one fault scenario, shared by the Rust, Python and Node clients.
//!
//! It starts the real server (on PostgreSQL), puts a TCP proxy in front of it, runs a client
//! workload through the proxy (the crate's own [`TodoClient`] in-process with `--client rust`,
//! or any program with `--client-cmd`), injects the fault, then counts the rows each logical
//! write left, straight from the server.
//!
//! Scenarios: `cut-after-headers` / `cut-before-headers` (25% of responses lost, the connection
//! cut just after / just before the response headers), `postgres-outage` (the database stopped
//! for 2 s, on a cluster of the scenario's own), `server-restart` (SIGKILL, started again 2 s
//! later on the same address).
//!
//! With retries on, the target is 0 errors surfaced to the application and exactly one row
//! per logical write; with `--retries off` (the control) the scenario must bite: errors or
//! duplicates > 0. The exit status says whether that held; the last line of stdout is the
//! report as JSON.
//!
//! A client program gets `TODO_TARGET` (host:port), `TODO_PREFIX`, `TODO_WRITES`,
//! `TODO_CONCURRENCY`, `TODO_PAUSE_MS` and `TODO_RETRIES` (`on`/`off`) in its environment. It
//! creates `TODO_WRITES` todos titled `{TODO_PREFIX}-{i}`, `TODO_CONCURRENCY` at a time,
//! pausing `TODO_PAUSE_MS` after each, each one logical write with its own key, and prints a
//! last line `{"ok": n, "errors": n, "codes": {"UNAVAILABLE": n, ...}}`.

mod cluster;
mod proxy;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use todo_client::proto;
use todo_client::{CallOptions, RetryPolicy, TodoClient};
use tonic::transport::Endpoint;

use crate::proxy::Cut;
use crate::server::Server;

/// Why a scenario could not be run (as opposed to a target it missed).
#[derive(Debug)]
pub struct Failure(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    CutAfterHeaders,
    CutBeforeHeaders,
    PostgresOutage,
    ServerRestart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Runs one fault scenario against one client and checks its target.
#[derive(Debug, Parser)]
#[command(name = "todo-faults")]
struct Args {
    /// The fault to inject.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The client: the crate's own Rust client, in this process.
    #[arg(long, conflicts_with = "client_cmd")]
    rust: bool,
    /// The client: a shell command that runs a workload (see above).
    #[arg(long)]
    client_cmd: Option<String>,
    /// Whether the client retries (`off`: the control run, which must show the fault bites).
    #[arg(long, value_enum, default_value = "on")]
    retries: Switch,
    /// Logical writes.
    #[arg(long, default_value_t = 60)]
    writes: usize,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The pause after each write, per worker.
    #[arg(long, default_value = "40ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// The share of responses lost in the cut scenarios.
    #[arg(long, default_value_t = 0.25)]
    cut_probability: f64,
    /// How long the database or the server stays down.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// The server binary (default: `todo-server` next to this one).
    #[arg(long, env = "TODO_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// The PostgreSQL server on which a database of the scenario's own is made (all scenarios
    /// but `postgres-outage`, which makes a cluster of its own).
    #[arg(
        long,
        env = "TODO_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
}

/// What the client saw.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct ClientReport {
    ok: u64,
    errors: u64,
    #[serde(default)]
    codes: BTreeMap<String, u64>,
}

/// The scenario's outcome.
#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    client: String,
    retries: bool,
    writes: usize,
    cuts: u64,
    ok: u64,
    errors: u64,
    codes: BTreeMap<String, u64>,
    /// Logical writes that left no row.
    missing: usize,
    /// Logical writes that left more than one row.
    duplicated: usize,
    rows: usize,
    target_met: bool,
    seconds: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            let passed = if args.retries == Switch::On {
                report.target_met
            } else {
                report.errors > 0 || report.duplicated > 0
            };
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if passed {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "todo-faults: {}",
                    if args.retries == Switch::On {
                        "target missed: errors reached the application, or a write left other than one row"
                    } else {
                        "the control run saw no error and no duplicate: the fault did not bite"
                    }
                );
                ExitCode::FAILURE
            }
        }
        Err(Failure(message)) => {
            eprintln!("todo-faults: {message}");
            ExitCode::FAILURE
        }
    }
}

fn server_bin(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(bin) = &args.server_bin {
        return Ok(bin.clone());
    }
    let me = std::env::current_exe().map_err(|err| Failure(format!("current exe: {err}")))?;
    let bin = me.with_file_name("todo-server");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(Failure(format!(
            "{bin:?} does not exist: build it (cargo build) or pass --server-bin"
        )))
    }
}

/// A database of the scenario's own on the shared PostgreSQL server, dropped at the end.
struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

fn psql(url: &str, sql: &str) -> Result<(), Failure> {
    let output = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|err| Failure(format!("run psql: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Failure(format!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

impl ScratchDatabase {
    fn create(admin_url: &str) -> Result<Self, Failure> {
        let name = format!("faults_{}", uuid::Uuid::now_v7().simple());
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

async fn run(args: &Args) -> Result<Report, Failure> {
    let started = Instant::now();
    let bin = server_bin(args)?;
    let (cluster, scratch) = if args.scenario == Scenario::PostgresOutage {
        (Some(cluster::Cluster::start()?), None)
    } else {
        (None, Some(ScratchDatabase::create(&args.postgres_url)?))
    };
    let database_url = match (&cluster, &scratch) {
        (Some(cluster), _) => cluster.url(),
        (_, Some(scratch)) => scratch.url.clone(),
        _ => return Err(Failure("no database".into())),
    };
    let mut server = Server::start(bin, &database_url).await?;
    let cut = match args.scenario {
        Scenario::CutAfterHeaders => Cut::AfterHeaders,
        Scenario::CutBeforeHeaders => Cut::BeforeHeaders,
        _ => Cut::Never,
    };
    let proxy = proxy::start(server.addr, cut, args.cut_probability)
        .await
        .map_err(|err| Failure(format!("start the proxy: {err}")))?;
    let prefix = format!("{:?}-{}", args.scenario, uuid::Uuid::now_v7().simple());

    let fault = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match args.scenario {
            Scenario::PostgresOutage => {
                if let Some(cluster) = &cluster {
                    cluster.pg_ctl_stop()?;
                    tokio::time::sleep(args.outage).await;
                    cluster.pg_ctl_start()?;
                }
            }
            Scenario::ServerRestart => {
                server.kill9().await;
                tokio::time::sleep(args.outage).await;
                server.restart().await?;
            }
            Scenario::CutAfterHeaders | Scenario::CutBeforeHeaders => {}
        }
        Ok::<(), Failure>(())
    };
    let workload = async {
        match &args.client_cmd {
            Some(command) => run_command(command, args, &proxy.addr.to_string(), &prefix).await,
            None => Ok(run_rust(args, &proxy.addr.to_string(), &prefix).await),
        }
    };
    let (faulted, client) = tokio::join!(fault, workload);
    faulted?;
    let client = client?;

    let rows = titles(server.addr).await?;
    let mut missing = 0;
    let mut duplicated = 0;
    let mut counted = 0;
    for i in 0..args.writes {
        match rows.get(&format!("{prefix}-{i}")).copied().unwrap_or(0) {
            0 => missing += 1,
            1 => counted += 1,
            n => {
                duplicated += 1;
                counted += n;
            }
        }
    }
    let unexpected = rows.values().sum::<usize>() - counted;
    Ok(Report {
        scenario: args.scenario,
        client: args
            .client_cmd
            .clone()
            .unwrap_or_else(|| "rust (todo_client)".into()),
        retries: args.retries == Switch::On,
        writes: args.writes,
        cuts: proxy.cuts.load(std::sync::atomic::Ordering::Relaxed),
        ok: client.ok,
        errors: client.errors,
        codes: client.codes,
        missing,
        duplicated,
        rows: rows.values().sum(),
        target_met: client.errors == 0
            && client.ok == args.writes as u64
            && missing == 0
            && duplicated == 0
            && unexpected == 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every todo's title and how many rows carry it, read from the server directly.
async fn titles(addr: std::net::SocketAddr) -> Result<HashMap<String, usize>, Failure> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|err| Failure(format!("{err}")))?
        .connect_lazy();
    let client = TodoClient::new(channel);
    let mut titles = HashMap::new();
    let mut page_token = String::new();
    loop {
        let request = proto::ListTodosRequest {
            page_size: 1000,
            page_token,
            ..proto::ListTodosRequest::default()
        };
        let page = client
            .list_todos(request, CallOptions::default())
            .await
            .map_err(|err| Failure(format!("list the todos: {err}")))?;
        for todo in page.todos {
            *titles.entry(todo.title).or_insert(0) += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok(titles);
        }
        page_token = page.next_page_token;
    }
}

async fn run_command(
    command: &str,
    args: &Args,
    target: &str,
    prefix: &str,
) -> Result<ClientReport, Failure> {
    let output = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("TODO_TARGET", target)
        .env("TODO_PREFIX", prefix)
        .env("TODO_WRITES", args.writes.to_string())
        .env("TODO_CONCURRENCY", args.concurrency.to_string())
        .env("TODO_PAUSE_MS", args.pause.as_millis().to_string())
        .env(
            "TODO_RETRIES",
            if args.retries == Switch::On {
                "on"
            } else {
                "off"
            },
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|err| Failure(format!("run {command}: {err}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty());
    last.and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| {
            Failure(format!(
                "{command} ({}) printed no report; its stdout: {stdout}",
                output.status
            ))
        })
}

/// The workload, with the crate's own client.
async fn run_rust(args: &Args, target: &str, prefix: &str) -> ClientReport {
    let channel = match Endpoint::from_shared(format!("http://{target}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy(),
        Err(err) => {
            eprintln!("todo-faults: {err}");
            return ClientReport {
                errors: args.writes as u64,
                ..ClientReport::default()
            };
        }
    };
    let policy = match args.retries {
        Switch::On => RetryPolicy::default(),
        Switch::Off => RetryPolicy::no_retries(),
    };
    let client = TodoClient::new(channel).with_policy(policy);
    let report = Arc::new(Mutex::new(ClientReport::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let report = Arc::clone(&report);
        let next = Arc::clone(&next);
        let (writes, pause, prefix) = (args.writes, args.pause, prefix.to_owned());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= writes {
                    return;
                }
                let todo = proto::Todo {
                    title: format!("{prefix}-{i}"),
                    ..proto::Todo::default()
                };
                let outcome = client.create_todo(todo).await;
                if let Ok(mut report) = report.lock() {
                    match outcome {
                        Ok(_) => report.ok += 1,
                        Err(err) => {
                            report.errors += 1;
                            *report.codes.entry(format!("{:?}", err.code())).or_insert(0) += 1;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Arc::try_unwrap(report)
        .ok()
        .and_then(|report| report.into_inner().ok())
        .unwrap_or_default()
}

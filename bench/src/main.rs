//! todo-bench: drives a running TodoService with one scenario at a fixed number of calls in
//! flight, over real sockets, with the crate's own generated client, and reports calls/s,
//! latency percentiles and errors by status code (a table, or `--json`).
//!
//! Scenarios:
//! - `create-keyed`: CreateTodo with a fresh idempotency key per call;
//! - `create-unkeyed`: CreateTodo without a key;
//! - `replay`: CreateTodo repeating one key and one request (every call after the first is a
//!   replay);
//! - `get`: GetTodo of a random todo among `--seed-todos` created beforehand;
//! - `list`: ListTodos, first page of 50;
//! - `update`: UpdateTodo (full replacement, new title, fresh key) of a random seeded todo;
//! - `mixed`: per call, 20% create-keyed, 50% get, 15% list, 15% update;
//! - `health`: `grpc.health.v1.Health/Check` of TodoService, which the server answers from
//!   memory: no database, the gRPC transport's own cost (the floor under every other scenario).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod cpu;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use todo_client::TodoServiceClient;
use todo_client::proto;
use todo_client::{CallError, CallOptions, RetryPolicy, TodoClient};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    CreateKeyed,
    CreateUnkeyed,
    Replay,
    Get,
    List,
    Update,
    Mixed,
    Health,
}

#[derive(Debug, Parser)]
#[command(name = "todo-bench", about = "Load generator for TodoService")]
struct Args {
    /// Server URI.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// What to call.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many measured calls instead (whichever comes first).
    #[arg(long)]
    calls: Option<u64>,
    /// Calls made before measuring starts, for this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Characters of description in created and updated todos.
    #[arg(long, default_value_t = 0)]
    payload_size: usize,
    /// Todos created before a get / list / update / mixed run.
    #[arg(long, default_value_t = 1000)]
    seed_todos: usize,
    /// Bearer token, when the server has callers configured.
    #[arg(long, env = "TODO_BENCH_TOKEN")]
    token: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// A label copied into the JSON (e.g. the backend).
    #[arg(long, default_value = "")]
    label: String,
    /// Exit with status 1 if any call failed.
    #[arg(long)]
    fail_on_error: bool,
    /// Retry failures whose outcome is unknown, as `todo_client` does for callers
    /// (same key, backoff, 30 s budget). Off by default, so that each measured call is one
    /// attempt and every failure is counted.
    #[arg(long)]
    retries: bool,
    /// The server's process id: report its CPU time (user + system, from /proc) per measured
    /// call.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The database's process name (e.g. `postgres`): report the CPU time of every process of
    /// that name per measured call.
    #[arg(long)]
    database_process: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    scenario: Scenario,
    concurrency: usize,
    connections: usize,
    payload_size: usize,
    seconds: f64,
    calls: u64,
    calls_per_second: f64,
    latency_ms: Latency,
    errors: BTreeMap<String, u64>,
    /// The server's CPU microseconds per call (with `--server-pid`).
    server_cpu_us_per_call: Option<f64>,
    /// The database's CPU microseconds per call (with `--database-process`).
    database_cpu_us_per_call: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Everything a worker needs to make calls.
struct Load {
    scenario: Scenario,
    channels: Vec<Channel>,
    token: Option<String>,
    /// The crate's retrying client, one per channel (every call but unkeyed creates and
    /// health checks goes through it).
    clients: Vec<TodoClient>,
    description: String,
    seeded: Vec<proto::Todo>,
    replay_key: String,
    sequence: AtomicU64,
}

type CallResult = Result<(), Code>;

impl Load {
    fn request<T>(&self, message: T, key: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(key) = key
            && let Ok(value) = key.parse()
        {
            request.metadata_mut().insert("idempotency-key", value);
        }
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    fn client(&self, n: u64) -> TodoServiceClient<Channel> {
        let index = usize::try_from(n).unwrap_or(0) % self.channels.len();
        TodoServiceClient::new(self.channels[index].clone())
    }

    fn new_todo(&self, title: String) -> proto::CreateTodoRequest {
        proto::CreateTodoRequest {
            todo: Some(proto::Todo {
                title,
                description: self.description.clone(),
                ..proto::Todo::default()
            }),
            ..proto::CreateTodoRequest::default()
        }
    }

    fn random_seeded(&self) -> &proto::Todo {
        &self.seeded[rand::random_range(0..self.seeded.len())]
    }

    fn safe_client(&self, n: u64) -> &TodoClient {
        &self.clients[usize::try_from(n).unwrap_or(0) % self.clients.len()]
    }

    fn new_todo_message(&self, title: String) -> proto::Todo {
        proto::Todo {
            title,
            description: self.description.clone(),
            ..proto::Todo::default()
        }
    }

    async fn call(&self, scenario: Scenario) -> CallResult {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let client = self.safe_client(n);
        let options = CallOptions::default();
        let result: Result<(), CallError> = match scenario {
            Scenario::CreateKeyed => client
                .create_todo(self.new_todo_message(format!("bench {n}")))
                .await
                .map(drop),
            Scenario::CreateUnkeyed => {
                // The retrying client keys every write; this scenario measures the unkeyed
                // path, so it uses the generated client directly.
                let request = self.request(self.new_todo(format!("bench {n}")), None);
                return self
                    .client(n)
                    .create_todo(request)
                    .await
                    .map(drop)
                    .map_err(|status| status.code());
            }
            Scenario::Replay => {
                let options = CallOptions {
                    idempotency_key: Some(self.replay_key.clone()),
                    deadline: None,
                };
                client
                    .create_todo_with(self.new_todo_message("replayed".to_owned()), options)
                    .await
                    .map(drop)
            }
            Scenario::Get => {
                let id = &self.random_seeded().id;
                client.get_todo(id, options).await.map(drop)
            }
            Scenario::List => {
                let request = proto::ListTodosRequest {
                    page_size: 50,
                    ..proto::ListTodosRequest::default()
                };
                client.list_todos(request, options).await.map(drop)
            }
            Scenario::Update => {
                let seeded = self.random_seeded();
                let todo = proto::Todo {
                    id: seeded.id.clone(),
                    title: format!("bench updated {n}"),
                    description: self.description.clone(),
                    ..proto::Todo::default()
                };
                client.update_todo(todo, None, options).await.map(drop)
            }
            Scenario::Mixed => {
                let pick = rand::random_range(0..100);
                let scenario = match pick {
                    0..20 => Scenario::CreateKeyed,
                    20..70 => Scenario::Get,
                    70..85 => Scenario::List,
                    _ => Scenario::Update,
                };
                return Box::pin(self.call(scenario)).await;
            }
            Scenario::Health => {
                let index = usize::try_from(n).unwrap_or(0) % self.channels.len();
                let request = HealthCheckRequest {
                    service: "todo.v1.TodoService".to_owned(),
                };
                return HealthClient::new(self.channels[index].clone())
                    .check(self.request(request, None))
                    .await
                    .map(drop)
                    .map_err(|status| status.code());
            }
        };
        result.map_err(|err| err.code())
    }
}

/// Worker totals.
struct Tally {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    calls: u64,
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

async fn worker(
    load: Arc<Load>,
    until: Instant,
    budget: Option<Arc<AtomicU64>>,
    measure: bool,
) -> Tally {
    let mut tally = Tally {
        histogram: new_histogram(),
        errors: BTreeMap::new(),
        calls: 0,
    };
    while Instant::now() < until {
        if let Some(budget) = &budget
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_err()
        {
            break;
        }
        let started = Instant::now();
        let result = load.call(load.scenario).await;
        if !measure {
            continue;
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = tally.histogram.record(micros.max(1));
        tally.calls += 1;
        if let Err(code) = result {
            *tally.errors.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    tally
}

async fn connect(args: &Args) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = Endpoint::from_shared(args.target.clone())?
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30));
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

async fn prepare(args: &Args, channels: Vec<Channel>) -> Result<Load, tonic::Status> {
    let policy = if args.retries {
        RetryPolicy::default()
    } else {
        RetryPolicy::no_retries()
    };
    let mut clients = Vec::new();
    for channel in &channels {
        let client = TodoClient::new(channel.clone()).with_policy(policy.clone());
        clients.push(match &args.token {
            Some(token) => client
                .with_token(token)
                .map_err(|err| tonic::Status::invalid_argument(err.to_string()))?,
            None => client,
        });
    }
    let mut load = Load {
        scenario: args.scenario,
        channels,
        token: args.token.clone(),
        clients,
        description: "d".repeat(args.payload_size),
        seeded: Vec::new(),
        replay_key: uuid::Uuid::now_v7().to_string(),
        sequence: AtomicU64::new(0),
    };
    if matches!(
        args.scenario,
        Scenario::Get | Scenario::List | Scenario::Update | Scenario::Mixed
    ) {
        let mut client = load.client(0);
        for i in 0..args.seed_todos.max(1) {
            let request = load.request(load.new_todo(format!("seed {i}")), None);
            load.seeded
                .push(client.create_todo(request).await?.into_inner());
        }
    }
    if args.scenario == Scenario::Replay {
        let request = load.request(load.new_todo("replayed".to_owned()), Some(&load.replay_key));
        load.client(0).create_todo(request).await?;
    }
    Ok(load)
}

async fn run(args: Args) -> Result<Report, Box<dyn std::error::Error>> {
    let channels = connect(&args).await?;
    let load = Arc::new(prepare(&args, channels).await?);

    // Warm-up: same calls, not measured.
    let until = Instant::now() + args.warmup;
    let warmers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&load), until, None, false)))
        .collect();
    for warmer in warmers {
        warmer.await?;
    }

    let cpu_before = cpu::Sample::take(args.server_pid, args.database_process.as_deref());
    let started = Instant::now();
    let until = started + args.duration;
    let budget = args.calls.map(|calls| Arc::new(AtomicU64::new(calls)));
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let load = Arc::clone(&load);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let first = load.sequence.load(Ordering::Relaxed);
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if done.load(Ordering::Relaxed) == 1 {
                    return;
                }
                let calls = load.sequence.load(Ordering::Relaxed) - first;
                let seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "[{seconds:5.1}s] {calls} calls, {:.0}/s",
                    calls as f64 / seconds
                );
            }
        })
    };
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&load), until, budget.clone(), true)))
        .collect();
    let mut histogram = new_histogram();
    let mut errors = BTreeMap::new();
    let mut calls = 0;
    for worker in workers {
        let tally = worker.await?;
        histogram.add(&tally.histogram)?;
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
        calls += tally.calls;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (server_cpu_us_per_call, database_cpu_us_per_call) =
        cpu::Sample::take(args.server_pid, args.database_process.as_deref())
            .per_call_since(&cpu_before, calls);
    done.store(1, Ordering::Relaxed);
    progress.abort();

    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        label: args.label.clone(),
        scenario: args.scenario,
        concurrency: args.concurrency,
        connections: args.connections,
        payload_size: args.payload_size,
        seconds,
        calls,
        calls_per_second: calls as f64 / seconds,
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        },
        errors,
        server_cpu_us_per_call,
        database_cpu_us_per_call,
    })
}

fn print_table(report: &Report) {
    println!(
        "{:<15} {:>5} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  errors",
        "scenario", "conc", "calls", "calls/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    let scenario = serde_json::to_value(report.scenario)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "{:<15} {:>5} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:?}",
        scenario,
        report.concurrency,
        report.calls,
        report.calls_per_second,
        report.latency_ms.p50,
        report.latency_ms.p90,
        report.latency_ms.p99,
        report.latency_ms.p999,
        report.latency_ms.max,
        report.errors
    );
    if let Some(server) = report.server_cpu_us_per_call {
        println!("server CPU per call: {server:.1} us");
    }
    if let Some(database) = report.database_cpu_us_per_call {
        println!("database CPU per call: {database:.1} us");
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let fail_on_error = args.fail_on_error;
    let report = match run(args).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("todo-bench: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(err) => {
                eprintln!("todo-bench: {err}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        print_table(&report);
    }
    if fail_on_error && !report.errors.is_empty() {
        eprintln!(
            "todo-bench: {} calls failed",
            report.errors.values().sum::<u64>()
        );
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

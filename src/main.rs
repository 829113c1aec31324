use std::process::ExitCode;

use clap::Parser;
use todo_service::config::{Cli, Command};
use todo_service::error::Chain;
use todo_service::startup::MigrateReport;
use todo_service::startup::{Application, migrate, sweep_once};
use todo_service::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let otlp_endpoint = config.otlp_endpoint.as_deref();
    // Log lines are written by a thread of their own, off the threads that serve calls.
    let (log_thread, log_writer) = match telemetry::LogThread::start(std::io::stdout()) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("cannot start the log writer thread: {err}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match telemetry::init(log_writer, config.log_format, ansi, otlp_endpoint) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("cannot set up logging and tracing: {err}");
            return ExitCode::FAILURE;
        }
    };
    let status = run(cli.command.unwrap_or(Command::Serve), &config).await;
    telemetry.shutdown();
    // Every line logged so far is written before the process exits.
    log_thread.stop();
    status
}

async fn run(command: Command, config: &todo_service::config::Config) -> ExitCode {
    match command {
        Command::HashToken => {
            let mut token = String::new();
            if let Err(err) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut token) {
                eprintln!("cannot read the token from standard input: {err}");
                return ExitCode::FAILURE;
            }
            let token = token.trim_end_matches(['\r', '\n']);
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                eprintln!("the token must be one line of visible ASCII characters");
                return ExitCode::FAILURE;
            }
            println!("{}", todo_service::auth::hash_token(token));
            ExitCode::SUCCESS
        }
        Command::Sweep => match sweep_once(config).await {
            Ok(report) => {
                tracing::info!(
                    rows_deleted = report.rows_deleted,
                    batches = report.batches,
                    "sweep finished"
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(error = %Chain(&err), "sweep failed");
                ExitCode::FAILURE
            }
        },
        Command::Migrate { action } => match migrate(config, action).await {
            Ok(report) => {
                let (migrations, done) = match &report {
                    MigrateReport::Applied(states) => (states, "migrated"),
                    MigrateReport::Status(states) => (states, "status"),
                    MigrateReport::Reverted(states) => (states, "reverted"),
                };
                for state in migrations {
                    let mark = if state.applied { "applied" } else { "pending" };
                    println!("{mark} {}", state.name);
                }
                let pending = migrations.iter().filter(|state| !state.applied).count();
                tracing::info!(pending, "{done}");
                match report {
                    MigrateReport::Status(_) if pending > 0 => ExitCode::from(3),
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(err) => {
                tracing::error!(error = %Chain(&err), "migrate failed");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            let app = match Application::build(config).await {
                Ok(app) => app,
                Err(err) => {
                    tracing::error!(error = %Chain(&err), "start-up failed");
                    return ExitCode::FAILURE;
                }
            };
            let signals = termination_signals();
            let first = wait_for_signals(signals.clone(), 1);
            let second = wait_for_signals(signals, 2);
            match app.run_until_stopped(first, second).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %Chain(&err), "server failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// How many times SIGINT (Ctrl-C) or SIGTERM has arrived so far.
fn termination_signals() -> tokio::sync::watch::Receiver<u32> {
    let (count, counted) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    None
                }
            };
        loop {
            #[cfg(unix)]
            let received = async {
                match terminate.as_mut() {
                    Some(terminate) => tokio::select! {
                        result = tokio::signal::ctrl_c() => result.is_ok(),
                        received = terminate.recv() => received.is_some(),
                    },
                    None => tokio::signal::ctrl_c().await.is_ok(),
                }
            }
            .await;
            #[cfg(not(unix))]
            let received = tokio::signal::ctrl_c().await.is_ok();
            if !received {
                // No more signals can arrive; the server stops by other means.
                std::future::pending::<()>().await;
            }
            count.send_modify(|count| *count += 1);
        }
    });
    counted
}

/// Completes once `n` termination signals have arrived.
async fn wait_for_signals(mut counted: tokio::sync::watch::Receiver<u32>, n: u32) {
    if counted.wait_for(|count| *count >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

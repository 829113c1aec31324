//! SQLite group commit: single-statement writes from concurrent calls share one write
//! transaction.
//!
//! SQLite has one writer, and each statement on it is a hop to the connection's worker thread.
//! A write that is one statement (an insert, a guarded update, a keyed create through its
//! trigger) is sent here instead of running on its own: one task takes every write queued at
//! that moment (up to [`MAX_BATCH`]), runs them in ONE `BEGIN IMMEDIATE` ... `COMMIT`, and only
//! then answers each caller. A call's write is still atomic and isolated (a statement is), and
//! it is acknowledged only once committed.
//!
//! - A statement that fails rolls the whole batch back (SQLite may already have); its caller
//!   gets the error, and the others run again in the next batch (nothing of theirs committed).
//! - A caller that has given up (its deadline passed, its client went away) before its
//!   statement runs is skipped; if one gives up while the batch runs, the batch rolls back and
//!   the others run again, so no write commits after its caller was answered
//!   DEADLINE_EXCEEDED (unless the COMMIT was already on its way).
//! - A failed BEGIN or COMMIT is every waiting caller's error: nothing of theirs committed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{DatabaseConnection, QueryResult, Statement};
use tokio::sync::{mpsc, oneshot};

use super::errors::{During, StorageError};

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 64;

/// Queued writes waiting for the writer task.
const QUEUE: usize = 1024;

/// The handle calls send their writes through (cheap to clone; the task ends when the last
/// handle is dropped).
#[derive(Debug, Clone)]
pub struct GroupCommit {
    /// The writer task's queue.
    jobs: mpsc::Sender<Job>,
    /// What the task has committed (shared with it).
    counts: Arc<GroupCommitCounts>,
}

/// What group commit has done since start (for metrics).
#[derive(Debug, Default)]
pub struct GroupCommitCounts {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes committed in them.
    pub writes: AtomicU64,
}

/// One call's write, and where its outcome goes.
#[derive(Debug)]
struct Job {
    /// The write: one statement.
    statement: Statement,
    /// What it does, to name its errors.
    operation: &'static str,
    /// What the caller waits for, once committed; or why it did not commit.
    reply: Reply,
}

/// What a job answers.
#[derive(Debug)]
enum Reply {
    /// The rows the statement changed.
    Changed(oneshot::Sender<Result<u64, StorageError>>),
    /// The rows the statement returned (`RETURNING`).
    Returned(oneshot::Sender<Result<Vec<QueryResult>, StorageError>>),
}

/// What a statement gave, before the commit.
enum StatementResult {
    Changed(u64),
    Returned(Vec<QueryResult>),
}

impl Reply {
    /// Whether the caller has stopped waiting.
    fn is_closed(&self) -> bool {
        match self {
            Self::Changed(sender) => sender.is_closed(),
            Self::Returned(sender) => sender.is_closed(),
        }
    }

    fn fail(self, err: StorageError) {
        match self {
            Self::Changed(sender) => drop(sender.send(Err(err))),
            Self::Returned(sender) => drop(sender.send(Err(err))),
        }
    }

    fn succeed(self, result: StatementResult) {
        match (self, result) {
            (Self::Changed(sender), StatementResult::Changed(rows)) => drop(sender.send(Ok(rows))),
            (Self::Returned(sender), StatementResult::Returned(rows)) => {
                drop(sender.send(Ok(rows)))
            }
            // `run_statement` answers each kind with its own outcome.
            (reply, _) => reply.fail(StorageError {
                operation: "group commit",
                source: sea_orm::DbErr::Custom("a statement's outcome of another kind".into()),
            }),
        }
    }
}

impl GroupCommit {
    /// Starts the writer task on `writer` (the single SQLite writer pool).
    pub fn start(writer: DatabaseConnection) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let counts = Arc::default();
        tokio::spawn(run(writer, queue, Arc::clone(&counts)));
        Self { jobs, counts }
    }

    /// What has been committed so far (shared: the counts keep moving).
    pub fn counts(&self) -> Arc<GroupCommitCounts> {
        Arc::clone(&self.counts)
    }

    /// Runs `statement` in the next batch; answers the rows it changed once the batch has
    /// committed.
    pub async fn execute(
        &self,
        operation: &'static str,
        statement: Statement,
    ) -> Result<u64, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(operation, statement, Reply::Changed(reply))
            .await?;
        answer.await.map_err(|_| stopped(operation))?
    }

    /// Runs `statement` (one with `RETURNING`) in the next batch; answers the rows it returned
    /// once the batch has committed.
    pub async fn query(
        &self,
        operation: &'static str,
        statement: Statement,
    ) -> Result<Vec<QueryResult>, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(operation, statement, Reply::Returned(reply))
            .await?;
        answer.await.map_err(|_| stopped(operation))?
    }

    async fn send(
        &self,
        operation: &'static str,
        statement: Statement,
        reply: Reply,
    ) -> Result<(), StorageError> {
        let job = Job {
            statement,
            operation,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| stopped(operation))
    }
}

fn stopped(operation: &'static str) -> StorageError {
    StorageError {
        operation,
        source: sea_orm::DbErr::Custom("the SQLite writer task has stopped".to_owned()),
    }
}

async fn run(
    writer: DatabaseConnection,
    mut queue: mpsc::Receiver<Job>,
    counts: Arc<GroupCommitCounts>,
) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match queue.recv().await {
                Some(job) => pending.push_back(job),
                None => return,
            }
        }
        while pending.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        let take = pending.len().min(MAX_BATCH);
        let batch: Vec<Job> = pending.drain(..take).collect();
        let again = run_batch(&writer, batch, &counts).await;
        for job in again.into_iter().rev() {
            pending.push_front(job);
        }
    }
}

/// Runs `batch` in one transaction; returns the jobs to run again in the next one.
async fn run_batch(
    writer: &DatabaseConnection,
    batch: Vec<Job>,
    counts: &GroupCommitCounts,
) -> Vec<Job> {
    use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .collect();
    if batch.is_empty() {
        return batch;
    }
    let txn = match writer
        .begin_with_options(super::write_transaction(DbBackend::Sqlite))
        .await
        .during("begin write transaction")
    {
        Ok(txn) => txn,
        Err(err) => {
            for job in batch {
                job.reply.fail(err.clone());
            }
            return Vec::new();
        }
    };
    let mut ran: Vec<(Job, StatementResult)> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        if job.reply.is_closed() {
            continue;
        }
        let outcome = match job.reply {
            Reply::Changed(_) => txn
                .execute_raw(job.statement.clone())
                .await
                .map(|result| StatementResult::Changed(result.rows_affected())),
            Reply::Returned(_) => txn
                .query_all_raw(job.statement.clone())
                .await
                .map(StatementResult::Returned),
        };
        match outcome.during(job.operation) {
            Ok(outcome) => ran.push((job, outcome)),
            Err(err) => {
                let _ = txn.rollback().await;
                job.reply.fail(err);
                return ran.into_iter().map(|(job, _)| job).chain(jobs).collect();
            }
        }
    }
    if ran.iter().any(|(job, _)| job.reply.is_closed()) {
        let _ = txn.rollback().await;
        return ran.into_iter().map(|(job, _)| job).collect();
    }
    match txn.commit().await.during("commit") {
        Ok(()) => {
            counts.commits.fetch_add(1, Ordering::Relaxed);
            counts.writes.fetch_add(ran.len() as u64, Ordering::Relaxed);
            for (job, outcome) in ran {
                job.reply.succeed(outcome);
            }
        }
        Err(err) => {
            for (job, _) in ran {
                job.reply.fail(err.clone());
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, Database, DbBackend, TransactionTrait};

    async fn database() -> (tempfile::TempDir, DatabaseConnection) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("group.db").display());
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).sqlx_logging(false);
        let db = Database::connect(options).await.expect("connect");
        db.execute_unprepared(
            "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL CHECK (name <> ''))",
        )
        .await
        .expect("create table");
        (dir, db)
    }

    fn insert(id: i64, name: &str) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO things (id, name) VALUES (?, ?)",
            [id.into(), name.into()],
        )
    }

    async fn count(db: &DatabaseConnection) -> i64 {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) AS n FROM things",
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get("", "n").expect("n")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_and_one_failure_fails_only_its_caller() {
        let (_dir, db) = database().await;
        let group = GroupCommit::start(db.clone());
        let writes = (0..200).map(|id| {
            let group = group.clone();
            // Write 100 breaks the CHECK constraint.
            let name = if id == 100 { "" } else { "ok" };
            async move { (id, group.execute("insert thing", insert(id, name)).await) }
        });
        let results = futures::future::join_all(writes).await;
        for (id, result) in &results {
            match result {
                Ok(rows) => assert_eq!((*id != 100, *rows), (true, 1)),
                Err(err) => {
                    assert_eq!(*id, 100, "{err}");
                    assert_eq!(err.operation, "insert thing");
                }
            }
        }
        assert_eq!(count(&db).await, 199, "every other write committed");
        let counts = group.counts();
        let commits = counts.commits.load(Ordering::Relaxed);
        assert_eq!(counts.writes.load(Ordering::Relaxed), 199);
        assert!(
            commits < 100,
            "writes shared transactions: {commits} commits for 199 writes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_gave_up_never_commits() {
        let (_dir, db) = database().await;
        let group = GroupCommit::start(db.clone());
        // Hold the writer's only connection, so the writes queue behind it.
        let held = db.begin().await.expect("hold the writer");
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            group.execute("insert thing", insert(1, "abandoned")),
        )
        .await;
        assert!(given_up.is_err(), "the write waited for the writer");
        let kept = {
            let group = group.clone();
            tokio::spawn(async move { group.execute("insert thing", insert(2, "kept")).await })
        };
        held.rollback().await.expect("release the writer");
        assert_eq!(kept.await.expect("task").expect("committed"), 1);
        assert_eq!(count(&db).await, 1, "only the write whose caller waited");
    }
}

//! Log lines written off the worker threads, several at a time.
//!
//! A [`LineWriter`] hands each formatted line to a buffer shared with one thread of its own
//! (`log-writer`), which waits [`GATHER`] after the first line of a batch and then writes every
//! line that has queued up with one `write` to its sink (standard output). Under load that is
//! one `write` per few dozen calls instead of one per call, and none on the threads that serve
//! calls (the profile behind it is in BENCHMARKS.md). Nothing is dropped: when [`MAX_QUEUED`]
//! bytes are waiting, a logging thread waits for the writer to catch up. [`LogThread::stop`]
//! writes what is left and ends the thread; a process killed with SIGKILL loses at most the
//! lines of the last [`GATHER`].

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer gathers lines after the first of a batch before it writes them.
pub const GATHER: Duration = Duration::from_millis(5);

/// The most bytes that may wait to be written before logging threads wait for the writer.
const MAX_QUEUED: usize = 1 << 20;

/// What the logging threads and the writer share.
#[derive(Debug, Default)]
struct Shared {
    /// The lines waiting to be written, and whether the writer is to stop.
    queue: Mutex<Queue>,
    /// Signalled when the queue gets its first line or is told to stop (the writer waits on it).
    filled: Condvar,
    /// Signalled when the writer took the queued lines (full logging threads wait on it).
    drained: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// Whole lines, in the order they were logged.
    bytes: Vec<u8>,
    /// Set by [`LogThread::stop`]: write what is left and end.
    stopping: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A thread that panicked while holding the lock left whole lines behind: carry on.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `MakeWriter` of the fmt layer: each line goes to the shared queue.
#[derive(Debug, Clone)]
pub struct LineWriter {
    /// The queue of the [`LogThread`] this writer feeds.
    shared: Arc<Shared>,
}

impl Write for &LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut queue = self.shared.lock();
        while queue.bytes.len() >= MAX_QUEUED && !queue.stopping {
            queue = self
                .shared
                .drained
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let was_empty = queue.bytes.is_empty();
        queue.bytes.extend_from_slice(line);
        drop(queue);
        if was_empty {
            self.shared.filled.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A borrowed writer per line: no reference count touched on the logging path.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = &'a LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// The writer thread; [`LogThread::stop`] writes the lines still queued and joins it.
#[derive(Debug)]
pub struct LogThread {
    /// Its queue.
    shared: Arc<Shared>,
    /// The thread, until it is stopped.
    thread: Option<JoinHandle<()>>,
}

impl LogThread {
    /// Starts the thread writing to `sink`, and returns it with the writer that feeds it.
    pub fn start<W: Write + Send + 'static>(sink: W) -> io::Result<(LogThread, LineWriter)> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_batches(&shared, sink)
            })?;
        let writer = LineWriter {
            shared: Arc::clone(&shared),
        };
        Ok((
            LogThread {
                shared,
                thread: Some(thread),
            },
            writer,
        ))
    }

    /// Writes every line logged so far and ends the thread (what dropping it does). Lines
    /// logged afterwards are dropped.
    pub fn stop(self) {}
}

impl Drop for LogThread {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.filled.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("the log writer thread panicked");
        }
    }
}

/// The writer thread's loop: wait for a first line, gather for [`GATHER`], write the batch.
fn write_batches<W: Write>(shared: &Shared, mut sink: W) {
    let mut batch = Vec::new();
    let mut failed = false;
    loop {
        let mut queue = shared.lock();
        while queue.bytes.is_empty() && !queue.stopping {
            queue = shared
                .filled
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if !queue.stopping {
            drop(queue);
            std::thread::sleep(GATHER);
            queue = shared.lock();
        }
        std::mem::swap(&mut batch, &mut queue.bytes);
        let stopping = queue.stopping;
        drop(queue);
        shared.drained.notify_all();
        if let Err(err) = sink.write_all(&batch).and_then(|()| sink.flush())
            && !failed
        {
            // Standard output is gone (a closed pipe): nothing to log to; say so once.
            eprintln!("cannot write log lines: {err}");
            failed = true;
        }
        batch.clear();
        if stopping && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer holds it, counting its `write` calls.
    #[derive(Clone, Default)]
    struct Recorded {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            *self.writes.lock().unwrap() += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_of_every_thread_is_written_in_order_and_in_batches() {
        let sink = Recorded::default();
        let (thread, writer) = LogThread::start(sink.clone()).unwrap();
        let loggers: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        (&writer)
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for logger in loggers {
            logger.join().unwrap();
        }
        thread.stop();
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').expect("a whole line");
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines in order, none missing");
            next[t] += 1;
        }
        assert_eq!(next, [2_000; 4], "every line written");
        let writes = *sink.writes.lock().unwrap();
        assert!(writes < 8_000 / 10, "{writes} writes for 8 000 lines");
    }

    #[test]
    fn a_line_is_written_soon_without_a_stop() {
        let sink = Recorded::default();
        let (_thread, writer) = LogThread::start(sink.clone()).unwrap();
        (&writer).write_all(b"listening\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while sink.bytes.lock().unwrap().as_slice() != b"listening\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "not written within 2 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_queue_makes_loggers_wait_instead_of_dropping_lines() {
        let sink = Recorded::default();
        let (thread, writer) = LogThread::start(sink.clone()).unwrap();
        let line = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            (&writer).write_all(&line).unwrap();
        }
        thread.stop();
        assert_eq!(sink.bytes.lock().unwrap().len(), 64 * 64 * 1024);
    }
}

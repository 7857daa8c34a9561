//! Load generators shared by the benchmarks: closed-loop (a fixed number
//! of operations in flight) and open-loop (a fixed schedule, latency from
//! each operation's scheduled start, so a slow server cannot hide its own
//! queueing: no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;

/// One measured run.
pub struct Sample {
    pub records: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Table cells: done, p50, p99, p99.9 and max (ms), errors.
    pub fn cells(&self) -> String {
        format!(
            "{} | {:.1} | {:.1} | {:.1} | {:.1} | {}",
            self.records,
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
            self.errors,
        )
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs `concurrency` closed-loop workers calling `op` for `duration`.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Sample
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let latency = Arc::new(Mutex::new(new_histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, latency, errors, stop) =
                (op.clone(), latency.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let mut local = new_histogram();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if op().await {
                        local.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latency.lock().await.add(local).expect("same bounds");
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker panicked");
    }
    let elapsed = started.elapsed();
    let latency = latency.lock().await.clone();
    Sample {
        records: latency.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    }
}

/// Offers `rate` operations per second on a fixed schedule for `duration`;
/// latency is measured from each operation's scheduled start.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, op: F) -> Sample
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (op, latency, errors) = (op.clone(), latency.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            if op().await {
                let micros = scheduled.elapsed().as_micros() as u64;
                latency.lock().unwrap().saturating_record(micros);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("request task panicked");
    }
    let elapsed = started.elapsed();
    let latency = latency.lock().unwrap().clone();
    Sample {
        records: latency.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    }
}

/// The header line of a table: the command that produced it, the machine's
/// cores and the broker's version (`KAFKA_VERSION`, set by
/// `scripts/bench.sh`), then the run's own `details`.
pub fn header(title: &str, details: &str) {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!("## {title}\n");
    println!(
        "`{command}` — {} cores, Kafka {}, {details}\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "(KAFKA_VERSION unset)".into()),
    );
}

/// Shows the first few failed requests of a run on stderr, so that an
/// errors column comes with its reason (a status and problem, or the
/// client's error).
pub fn note_failure(failure: &str) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("a gateway request failed: {failure}");
    }
}

//! The local target, actuation without a cluster: a pool of worker
//! processes started from a command template and stopped with SIGTERM, so
//! that they drain (finish in-flight messages, commit, leave the group)
//! before exiting; and [`run`], which scales one on a channel's backlog
//! with the [`ScalingLoop`]. The policy, the estimator and the loop are the
//! Kubernetes controller's; only the actuation differs.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use osmosis_support::kafka::{ClientRole, ClientSettings, ConnectError, check_connection};

use crate::estimate::EstimatorConfig;
use crate::measure::{MeasureError, Probe};
use crate::policy::ScalerSpec;
use crate::scaling::{Polls, ScalingLoop, Target};

/// What the local autoscaler needs.
pub struct LocalConfig {
    pub brokers: String,
    /// librdkafka properties of the measuring client (TLS, SASL...).
    pub kafka_properties: Vec<(String, String)>,
    pub topic: String,
    pub group: String,
    pub spec: ScalerSpec,
    pub estimator: EstimatorConfig,
    pub poll_interval: Duration,
    /// Between polls, read the end offsets this often and poll at once on a
    /// surge ([`crate::estimate::Estimator::surging`]); `None`: polls only.
    pub surge_watch: Option<Duration>,
    /// Worker command; `{replica}` is replaced by the replica's number.
    pub command: Vec<String>,
    pub drain_timeout: Duration,
}

/// Why the local autoscaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Measure(#[from] MeasureError),
    #[error("cannot start: {0}")]
    Connect(#[from] ConnectError),
}

/// The longest the start-up waits for Kafka's first answer.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Scales a pool of worker processes on the channel until `shutdown`
/// resolves, then drains every worker. Refuses to start when Kafka refuses
/// the client's credentials or certificate; a cluster that does not answer
/// yet is only warned about: the loop holds until it does.
pub async fn run(
    config: LocalConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LocalError> {
    let client_config = ClientSettings::new(&config.brokers)
        .user(config.kafka_properties.iter().map(|(k, v)| (k, v)))
        .build();
    let checked = tokio::task::spawn_blocking(move || {
        check_connection(&client_config, ClientRole::Consumer, START_CHECK_TIMEOUT)
    })
    .await
    .expect("connection check panicked");
    match checked {
        Err(error) if error.is_unreachable() => tracing::warn!(%error, "Kafka does not answer yet"),
        checked => checked?,
    }
    let probe = Probe::new(
        &config.brokers,
        &config.kafka_properties,
        &config.topic,
        &config.group,
    )?;
    let scaling = ScalingLoop::new(None, Ok(probe), config.estimator);
    let mut pool = ProcessPool::new(config.command, config.drain_timeout);
    if let Err(error) = pool.start_or_stop(config.spec.min_replicas) {
        tracing::error!(%error, "cannot start workers");
    }
    let polls = Polls {
        interval: config.poll_interval,
        surge_watch: config.surge_watch,
    };
    scaling.run(&mut pool, &config.spec, polls, shutdown).await;
    tracing::info!("stopping: draining every worker");
    pool.shutdown().await;
    Ok(())
}

/// A started worker process.
struct Replica {
    id: u64,
    child: Child,
}

/// Local worker processes of one channel.
pub struct ProcessPool {
    program: String,
    args: Vec<String>,
    replicas: Vec<Replica>,
    /// Replicas told to stop that have not exited yet.
    draining: Vec<Replica>,
    next_id: u64,
    drain_timeout: Duration,
}

impl ProcessPool {
    /// `command` is the program and its arguments; `{replica}` in an
    /// argument is replaced by the replica's number.
    pub fn new(command: Vec<String>, drain_timeout: Duration) -> Self {
        let mut parts = command.into_iter();
        Self {
            program: parts.next().unwrap_or_default(),
            args: parts.collect(),
            replicas: Vec::new(),
            draining: Vec::new(),
            next_id: 0,
            drain_timeout,
        }
    }

    /// Starts or stops processes until `target` run; the newest stop first.
    fn start_or_stop(&mut self, target: u32) -> std::io::Result<()> {
        self.reap();
        while (self.replicas.len() as u32) < target {
            let id = self.next_id;
            self.next_id += 1;
            let args: Vec<String> = self
                .args
                .iter()
                .map(|a| a.replace("{replica}", &id.to_string()))
                .collect();
            let mut command = Command::new(&self.program);
            command.args(&args).stdin(Stdio::null()).kill_on_drop(true);
            // Workers never outlive the autoscaler, even one killed outright:
            // the kernel asks them to drain when it dies.
            // SAFETY: only an async-signal-safe system call runs between fork
            // and exec.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
            let child = command.spawn()?;
            tracing::info!(replica = id, pid = child.id(), "started worker");
            self.replicas.push(Replica { id, child });
        }
        while self.replicas.len() as u32 > target {
            let replica = self.replicas.pop().expect("more than target");
            if let Some(pid) = replica.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            tracing::info!(replica = replica.id, "stopping worker (SIGTERM: it drains)");
            self.draining.push(replica);
        }
        Ok(())
    }

    /// Forgets replicas that exited, logging how.
    fn reap(&mut self) {
        for list in [&mut self.replicas, &mut self.draining] {
            list.retain_mut(|replica| match replica.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(replica = replica.id, %status, "worker exited");
                    false
                }
                _ => true,
            });
        }
    }

    /// Stops every replica and waits for them to drain (then kills the rest).
    pub async fn shutdown(&mut self) {
        self.start_or_stop(0).ok();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for replica in &mut self.draining {
            if tokio::time::timeout_at(deadline, replica.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    replica = replica.id,
                    "worker did not drain in time; killing it"
                );
                let _ = replica.child.kill().await;
            }
        }
        self.reap();
    }
}

impl Target for ProcessPool {
    type Error = std::io::Error;

    /// Replicas running (draining ones excluded).
    fn replicas(&mut self) -> u32 {
        self.reap();
        self.replicas.len() as u32
    }

    /// Spawning and signalling do not block: done before the future is
    /// awaited.
    fn scale_to(&mut self, replicas: u32) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(self.start_or_stop(replicas))
    }
}

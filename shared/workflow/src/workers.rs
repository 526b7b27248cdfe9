//! Starting and stopping a service's workflow workers (relay, timer worker,
//! consumers) together: the tables are installed first, retried with backoff
//! while the database does not answer, then every worker runs until `stop`.
//! Each worker is safe to kill anywhere, so a process that dies without
//! `stop` loses nothing; `stop` only lets in-flight work finish first.

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinHandle};

use crate::{Schema, Shutdown, backoff::backoff, install, wait_for_shutdown};

type Run = Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, ()> + Send>;

/// The workers of one service, before they start.
pub struct Workers {
    pool: PgPool,
    schema: Schema,
    runs: Vec<Run>,
    stop: watch::Sender<bool>,
    shutdown: Shutdown,
}

impl Workers {
    pub fn new(pool: PgPool, schema: Schema) -> Self {
        let (stop, shutdown) = crate::shutdown_channel();
        Self {
            pool,
            schema,
            runs: Vec::new(),
            stop,
            shutdown,
        }
    }

    /// The signal the workers stop on, e.g. for [`crate::feed::Feed::ending_on`].
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Adds a worker: `run` is e.g. `|shutdown| relay.run(shutdown)`.
    #[must_use]
    pub fn with<F>(mut self, run: impl FnOnce(Shutdown) -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runs
            .push(Box::new(move |shutdown| Box::pin(run(shutdown))));
        self
    }

    /// Installs the tables (retrying until the database answers), then runs
    /// every worker.
    pub fn start(self) -> RunningWorkers {
        let Self {
            pool,
            schema,
            runs,
            stop,
            mut shutdown,
        } = self;
        let task = tokio::spawn(async move {
            let mut failures = 0;
            let base = std::time::Duration::from_millis(100);
            let cap = std::time::Duration::from_secs(5);
            while let Err(error) = install(&pool, schema).await {
                failures += 1;
                let pause = backoff(failures, base, cap);
                tracing::warn!(%error, %schema, retry_in = ?pause, "workflow tables not installed yet");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = wait_for_shutdown(&mut shutdown) => return,
                }
            }
            let workers: Vec<_> = runs
                .into_iter()
                .map(|run| tokio::spawn(run(shutdown.clone())))
                .collect();
            for worker in workers {
                if let Err(error) = worker.await {
                    tracing::error!(%error, %schema, "a workflow worker stopped abnormally");
                }
            }
        });
        RunningWorkers { stop, task }
    }
}

/// Started workers; [`RunningWorkers::stop`] stops them.
pub struct RunningWorkers {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningWorkers {
    /// Signals every worker and waits until each finished its current step.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "workflow workers did not stop cleanly");
        }
    }
}

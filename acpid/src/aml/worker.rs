//! The interpreter on a thread of its own, each call bounded in time
//! ([`AmlWorker`]); the interpreter itself is `Aml` (`mod.rs`).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::{Aml, EvalError, Hardware};
use crate::tables::Tables;

type Job = Box<dyn FnOnce(&mut Aml) + Send>;

/// How a worker's table load went.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub tables: Vec<String>,
    pub errors: Vec<String>,
}

/// The interpreter on its own thread, so that AML which never finishes
/// (a `While (One)` in firmware, or bytes the crate's parser loops on) cannot
/// stall the scheme. Each call waits a bounded time. A call that overruns is
/// abandoned: its thread is left to its loop at the lowest priority (nice
/// 19; a thread cannot be stopped from outside) and a fresh worker loads the
/// tables again. If loading itself overruns, or after [`MAX_ABANDONED`]
/// abandoned threads, AML is switched off: tables and devices found so far
/// stay served, AML requests fail.
pub struct AmlWorker {
    jobs: Option<mpsc::Sender<Job>>,
    hw: Arc<dyn Hardware>,
    tables: Tables,
    call_timeout: Duration,
    load_timeout: Duration,
    tid: Arc<AtomicI32>,
    abandoned: usize,
    disabled: Option<String>,
    /// The report of the latest load.
    pub report: LoadReport,
}

/// Abandoned (looping) worker threads tolerated before AML is switched off.
pub const MAX_ABANDONED: usize = 3;

impl AmlWorker {
    /// Starts a worker and waits (at most `load_timeout`) for it to load
    /// the AML of `tables`; calls then wait at most `call_timeout`.
    pub fn start(
        hw: Arc<dyn Hardware>,
        tables: &Tables,
        load_timeout: Duration,
        call_timeout: Duration,
    ) -> AmlWorker {
        let mut w = AmlWorker {
            jobs: None,
            hw,
            tables: tables.clone(),
            call_timeout,
            load_timeout,
            tid: Arc::new(AtomicI32::new(0)),
            abandoned: 0,
            disabled: None,
            report: LoadReport::default(),
        };
        w.spawn();
        w
    }

    /// Why AML is off, if it is.
    pub fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }

    /// Worker threads given up on so far.
    pub fn abandoned(&self) -> usize {
        self.abandoned
    }

    fn spawn(&mut self) {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = mpsc::sync_channel::<LoadReport>(1);
        let hw = self.hw.clone();
        let tables = self.tables.clone();
        let tid = Arc::new(AtomicI32::new(0));
        self.tid = tid.clone();
        let spawned = std::thread::Builder::new()
            .name("aml".into())
            .spawn(move || {
                tid.store(
                    rustix::thread::gettid().as_raw_nonzero().get(),
                    Ordering::Relaxed,
                );
                let mut aml = Aml::new(hw, &tables);
                let _ = loaded_tx.send(LoadReport {
                    tables: aml.table_names(),
                    errors: aml.load_errors.clone(),
                });
                while let Ok(job) = rx.recv() {
                    // A panic in our own rendering or walking code (the
                    // interpreter calls are wrapped already) ends this job
                    // only: its reply channel drops, and `call` sees that.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut aml)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            self.disabled = Some(format!("cannot start the AML thread: {e}"));
            return;
        }
        match loaded_rx.recv_timeout(self.load_timeout) {
            Ok(report) => {
                self.report = report;
                self.jobs = Some(jobs);
            }
            Err(_) => {
                self.deprioritise();
                self.disabled = Some(format!(
                    "loading the AML did not finish in {:?}",
                    self.load_timeout
                ));
                log::error!("AML: {}", self.disabled.as_deref().unwrap_or(""));
            }
        }
    }

    /// Drops the priority of the current worker thread (about to be
    /// abandoned) as far as an unprivileged thread may.
    fn deprioritise(&self) {
        let tid = self.tid.load(Ordering::Relaxed);
        if let Some(pid) = rustix::process::Pid::from_raw(tid) {
            if let Err(e) = rustix::process::setpriority_process(Some(pid), 19) {
                log::warn!("AML: cannot lower the stuck thread's priority: {e}");
            }
        }
    }

    /// Runs `f` on the interpreter, waiting at most the call timeout.
    pub fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Aml) -> R + Send + 'static,
    ) -> Result<R, EvalError> {
        if let Some(why) = &self.disabled {
            return Err(EvalError::Unavailable(why.clone()));
        }
        let Some(jobs) = &self.jobs else {
            return Err(EvalError::Unavailable("no AML thread".into()));
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |aml| {
            let _ = tx.send(f(aml));
        });
        if jobs.send(job).is_err() {
            // The thread is gone (it cannot panic out of a job: every
            // interpreter call is wrapped); start another.
            self.jobs = None;
            self.spawn();
            return Err(EvalError::Unavailable("the AML thread had exited".into()));
        }
        match rx.recv_timeout(self.call_timeout) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The job panicked and the thread ended (not stuck: nothing
                // to deprioritise or count); a fresh interpreter takes over.
                log::error!("AML: a request panicked in acpid; reloading the interpreter");
                self.jobs = None;
                self.spawn();
                Err(EvalError::Panicked("acpid's AML request panicked".into()))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.abandoned += 1;
                log::error!(
                    "AML: an evaluation did not finish in {:?}; abandoning its thread ({} of {MAX_ABANDONED})",
                    self.call_timeout,
                    self.abandoned
                );
                self.deprioritise();
                self.jobs = None;
                if self.abandoned >= MAX_ABANDONED {
                    self.disabled = Some(format!("{} evaluations never finished", self.abandoned));
                } else {
                    self.spawn();
                }
                Err(EvalError::Hung)
            }
        }
    }
}

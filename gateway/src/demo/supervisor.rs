//! The demo's child processes: started with their output in log files,
//! watched, and all stopped when the demo ends, however it ends.
//!
//! Children stay in the demo's process group, so a Ctrl-C in the terminal
//! reaches them too; on SIGTERM, on an error or after the tour the demo
//! stops them itself (SIGTERM, then SIGKILL for any that outlive a short
//! grace period), and `Drop` does the same if anything unwinds.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::DemoError;

/// How long stopped children get to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often readiness probes are repeated.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The running children.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    children: Vec<Running>,
}

impl Supervisor {
    /// Starts `program args`, its stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<(), DemoError> {
        let file_err = |source| DemoError::File {
            action: "cannot open",
            path: log.clone(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(file_err)?;
        let err = out.try_clone().map_err(file_err)?;
        let child = Command::new(program)
            .args(args)
            // Plain text logs: the children write to files, not terminals.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                name: name.to_owned(),
                program: program.to_owned(),
                source,
            })?;
        self.children.push(Running {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Fails with the first child that has exited, naming its log.
    pub(crate) fn check(&mut self) -> Result<(), DemoError> {
        for r in &mut self.children {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(DemoError::ChildExited {
                    name: r.name.clone(),
                    status,
                    log: r.log.clone(),
                    tail: tail(&r.log, 15),
                });
            }
        }
        Ok(())
    }

    /// Stops every child: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub(crate) fn stop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        for r in &mut self.children {
            if let Ok(None) = r.child.try_wait()
                && let Ok(pid) = i32::try_from(r.child.id())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let running = self
                .children
                .iter_mut()
                .filter_map(|r| r.child.try_wait().ok())
                .filter(Option::is_none)
                .count();
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for mut r in self.children.drain(..) {
            if let Ok(None) = r.child.try_wait() {
                eprintln!("{} did not stop on SIGTERM; killing it", r.name);
                let _ = r.child.kill();
            }
            // Reap, so nothing is left behind as a zombie either.
            let _ = r.child.wait();
        }
    }
}

/// A deadline for one readiness condition. Callers loop on their probe
/// and call [`Waiting::again`] between tries.
#[derive(Debug)]
pub(crate) struct Waiting {
    what: String,
    start: Instant,
    limit: Duration,
    /// Where the children's logs are, for the error.
    logs: PathBuf,
}

impl Waiting {
    pub(crate) fn new(what: impl Into<String>, limit: Duration, logs: PathBuf) -> Waiting {
        Waiting {
            what: what.into(),
            start: Instant::now(),
            limit,
            logs,
        }
    }

    /// Fails if a child died or the deadline passed; otherwise waits a
    /// little before the next try.
    pub(crate) async fn again(&self, sup: &mut Supervisor) -> Result<(), DemoError> {
        sup.check()?;
        if self.start.elapsed() >= self.limit {
            return Err(DemoError::Timeout {
                what: self.what.clone(),
                secs: self.limit.as_secs(),
                logs: self.logs.clone(),
            });
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }

    /// [`Waiting::again`], naming what is still missing if time is up.
    pub(crate) async fn again_missing(
        &self,
        sup: &mut Supervisor,
        missing: &[String],
    ) -> Result<(), DemoError> {
        self.again(sup).await.map_err(|e| match e {
            DemoError::Timeout { what, secs, logs } => DemoError::Timeout {
                what: format!("{what} (still missing: {})", missing.join(", ")),
                secs,
                logs,
            },
            other => other,
        })
    }

    /// Time since the wait began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether something accepts TCP connections on `addr`.
pub(crate) async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How a child ended, in words.
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "ended".to_owned(),
    }
}

//! `tern dev`'s children (directories and POPs): started, watched, and
//! restarted with backoff when they die.
//!
//! A child is a `tern directory` or `tern pop` process. It tells its parent
//! it listens by writing a ready file (`{"endpoint", "pid"}`). A restarted
//! child listens on the address its first life had, so the other processes
//! (which know the directories' endpoints, and find POPs through the
//! directory) and clients reach it where they did before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Child;
use tokio::time::Instant;

/// Longest time a child may take to listen.
pub const CHILD_STARTUP_MS_MAX: u64 = 60_000;
/// First wait before restarting a child that died.
pub const RESTART_BACKOFF_MS_MIN: u64 = 250;
/// Longest wait before restarting a child that keeps dying.
pub const RESTART_BACKOFF_MS_MAX: u64 = 10_000;
/// A child that ran this long before it died is restarted after the
/// shortest wait again.
pub const STABLE_MS: u64 = 30_000;
/// Longest time a child may take to stop after SIGTERM before it is
/// killed.
pub const STOP_MS_MAX: u64 = 30_000;

/// What a child writes once it listens.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ready {
    /// Its gRPC endpoint.
    pub endpoint: String,
    /// Its process id.
    pub pid: u32,
    /// The URL of the cluster page it serves (`tern pop --http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
}

/// Writes the ready file `path` (if given) atomically.
pub fn write_ready(path: Option<&Path>, endpoint: &str, page: Option<&str>) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(&Ready {
        endpoint: endpoint.to_string(),
        pid: std::process::id(),
        page: page.map(str::to_string),
    })
    .map_err(|e| e.to_string())?;
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// How to run one child.
#[derive(Debug, Clone)]
pub struct Spec {
    /// For people: "directory 1", "POP fra".
    pub what: String,
    /// `tern` arguments (with `--listen ADDR`).
    pub args: Vec<String>,
    /// Its ready file.
    pub ready: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    /// Whether it is restarted when it dies (`tern dev --restart`).
    pub restart: bool,
}

enum State {
    Running,
    /// Started; its ready file is awaited.
    Starting {
        since: Instant,
    },
    /// Dead; restarted at `until`.
    Waiting {
        until: Instant,
    },
    /// Dead, and left dead (`tern dev --restart never`).
    Dead,
}

/// A supervised child.
pub struct Proc {
    spec: Spec,
    child: Option<Child>,
    state: State,
    /// Where it listens.
    pub endpoint: String,
    /// Its current process id.
    pub pid: u32,
    /// How often it was restarted.
    pub restarts: u32,
    backoff: Duration,
    up_since: Instant,
}

fn launch(spec: &Spec) -> Result<Child, String> {
    let _ = std::fs::remove_file(&spec.ready);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The child writes its logs itself (`--log-file`: appended, rotated);
    // its stderr goes to the same file, for what does not go through the
    // log (a panic's message, an early error).
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("{}: {e}", spec.log.display()))?;
    tokio::process::Command::new(exe)
        .args(&spec.args)
        .arg("--ready-file")
        .arg(&spec.ready)
        .arg("--log-file")
        .arg(&spec.log)
        .env("TERN_PARENT_PID", std::process::id().to_string())
        // A process group of its own: Ctrl-C or a SIGTERM to `tern dev`'s
        // group reaches `tern dev` alone, which stops the POPs (they
        // persist and release their actors) before the directories they
        // release through.
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `tern {}`: {e}", spec.args[0]))
}

/// The ready file of `child`, once it wrote it.
fn ready_of(spec: &Spec, child: &Child) -> Option<Ready> {
    let text = std::fs::read_to_string(&spec.ready).ok()?;
    let r: Ready = serde_json::from_str(&text).ok()?;
    (Some(r.pid) == child.id()).then_some(r)
}

/// The log's last lines, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Proc {
    /// Starts `spec` and waits (bounded by [`CHILD_STARTUP_MS_MAX`]) until
    /// it listens. Its later lives listen on the same address.
    pub async fn start(mut spec: Spec) -> Result<Proc, String> {
        let mut child = launch(&spec)?;
        let deadline = Instant::now() + Duration::from_millis(CHILD_STARTUP_MS_MAX);
        let ready = loop {
            if let Some(r) = ready_of(&spec, &child) {
                break r;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "`tern {}` exited with {status}:\n{}",
                    spec.args[0],
                    log_tail(&spec.log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`tern {}` did not start within {CHILD_STARTUP_MS_MAX} ms; see {}",
                    spec.args[0],
                    spec.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(addr) = ready.endpoint.split_once("://").map(|(_, a)| a.to_string())
            && let Some(i) = spec.args.iter().position(|a| a == "--listen")
            && i + 1 < spec.args.len()
        {
            spec.args[i + 1] = addr;
        }
        Ok(Proc {
            spec,
            child: Some(child),
            state: State::Running,
            endpoint: ready.endpoint,
            pid: ready.pid,
            restarts: 0,
            backoff: Duration::from_millis(RESTART_BACKOFF_MS_MIN),
            up_since: Instant::now(),
        })
    }

    /// Which child this is.
    pub fn what(&self) -> &str {
        &self.spec.what
    }

    /// Schedules a restart after the current backoff, and grows it. A
    /// child that `died_running` after [`STABLE_MS`] up starts over from
    /// the shortest wait; one that failed to come up never does.
    fn wait_to_restart(&mut self, now: Instant, died_running: bool) -> Duration {
        if died_running && now.duration_since(self.up_since) >= Duration::from_millis(STABLE_MS) {
            self.backoff = Duration::from_millis(RESTART_BACKOFF_MS_MIN);
        }
        let wait = self.backoff;
        self.state = State::Waiting { until: now + wait };
        self.backoff = (self.backoff * 2).min(Duration::from_millis(RESTART_BACKOFF_MS_MAX));
        wait
    }

    /// One supervision step: notices a death, restarts after the backoff,
    /// and notices a restarted child listening. Returns whether its process
    /// id changed (the cluster file must be written again).
    pub fn check(&mut self, now: Instant) -> bool {
        match self.state {
            State::Running => {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.child = None;
                    if !self.spec.restart {
                        self.state = State::Dead;
                        tracing::warn!(
                            child = %self.spec.what,
                            pid = self.pid,
                            %status,
                            "child exited; left dead (--restart never)"
                        );
                        return false;
                    }
                    let wait = self.wait_to_restart(now, true);
                    tracing::warn!(
                        child = %self.spec.what,
                        pid = self.pid,
                        %status,
                        restart_in_ms = wait.as_millis() as u64,
                        "child exited; restarting it"
                    );
                }
                false
            }
            State::Dead => false,
            State::Waiting { until } => {
                if now >= until {
                    match launch(&self.spec) {
                        Ok(c) => {
                            self.child = Some(c);
                            self.state = State::Starting { since: now };
                        }
                        Err(e) => {
                            let wait = self.wait_to_restart(now, false);
                            tracing::warn!(child = %self.spec.what, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot restart child");
                        }
                    }
                }
                false
            }
            State::Starting { since } => {
                let Some(child) = self.child.as_mut() else {
                    self.wait_to_restart(now, false);
                    return false;
                };
                if let Some(r) = ready_of(&self.spec, child) {
                    self.restarts += 1;
                    self.pid = r.pid;
                    self.endpoint = r.endpoint;
                    self.up_since = now;
                    self.state = State::Running;
                    tracing::warn!(
                        child = %self.spec.what,
                        pid = self.pid,
                        endpoint = %self.endpoint,
                        restarts = self.restarts,
                        "child restarted"
                    );
                    return true;
                }
                let exited = child.try_wait().ok().flatten();
                let late = now.duration_since(since) > Duration::from_millis(CHILD_STARTUP_MS_MAX);
                if exited.is_some() || late {
                    if late {
                        let _ = child.start_kill();
                    }
                    self.child = None;
                    let wait = self.wait_to_restart(now, false);
                    tracing::warn!(
                        child = %self.spec.what,
                        status = ?exited,
                        retry_in_ms = wait.as_millis() as u64,
                        log = %self.spec.log.display(),
                        "restarted child did not come up"
                    );
                }
                false
            }
        }
    }

    /// Stops it: SIGTERM (a POP persists its actors), then SIGKILL if it
    /// has not exited within [`STOP_MS_MAX`].
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_millis(STOP_MS_MAX), child.wait())
            .await
            .is_err()
        {
            tracing::warn!(child = %self.spec.what, "did not stop within {STOP_MS_MAX} ms after SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

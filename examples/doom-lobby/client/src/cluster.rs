//! The cluster the simulation runs on: a `tern dev` this process starts and
//! stops, or a running one named by its `cluster.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tern_client::pb;
use tern_client::{ClusterFile, Credentials, connect};

/// How long `tern dev` may take to write its cluster file.
pub const STARTUP_MS_MAX: u64 = 60_000;
/// How long `tern dev` may take to stop after SIGTERM before it is killed.
pub const SHUTDOWN_MS_MAX: u64 = 20_000;

/// The workspace root (this crate is `examples/doom-lobby/client`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(3)
        .expect("workspace root")
        .to_path_buf()
}

/// The actor crate's directory.
pub fn actors_dir() -> PathBuf {
    workspace().join("examples/doom-lobby/actors")
}

/// The `tern` binary: `explicit`, else the one next to this executable
/// (`target/debug/tern`), else built with cargo.
pub fn tern_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        bail!("--tern {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    // target/debug/doom-lobby or target/debug/deps/<test>.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let bin = d.join("tern");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    eprintln!("building tern (cargo build -p tern-cli --bin tern) ...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "tern-cli", "--bin", "tern"])
        .current_dir(workspace())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build -p tern-cli --bin tern failed ({status})");
    }
    let bin = dir.join("tern");
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!(
            "built tern but cannot find it next to {}; pass --tern PATH",
            exe.display()
        )
    }
}

/// A running cluster.
pub struct Cluster {
    /// Its cluster file.
    pub file: ClusterFile,
    /// The `tern dev` we started, if we did.
    child: Option<Child>,
    /// Its data directory (a temporary one is removed on drop).
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Uses a running cluster.
    pub fn attach(path: &Path) -> Result<Cluster> {
        let file = ClusterFile::read(path)
            .with_context(|| format!("cannot read cluster file {}", path.display()))?;
        if file.pops.is_empty() {
            bail!("{} lists no POPs", path.display());
        }
        Ok(Cluster {
            file,
            child: None,
            data: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            _tmp: None,
        })
    }

    /// Starts `tern dev --pops N --base-port 0 --data <tempdir>` and waits
    /// (bounded) for its cluster file.
    pub fn start(tern: &Path, pops: usize, keep: bool) -> Result<Cluster> {
        let tmp = tempfile::Builder::new()
            .prefix("doom-lobby-")
            .tempdir()
            .context("cannot create a data directory")?;
        let data = tmp.path().to_path_buf();
        let file = data.join("cluster.json");
        let log = std::fs::File::create(data.join("dev.log"))?;
        let mut child = Command::new(tern)
            .args(["dev", "--base-port", "0", "--pops", &pops.to_string()])
            .arg("--data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} dev", tern.display()))?;
        let started = Instant::now();
        let cluster = loop {
            if let Ok(c) = ClusterFile::read(&file)
                && c.pid == child.id()
            {
                break c;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "tern dev exited with {status}:\n{}",
                    std::fs::read_to_string(data.join("dev.log")).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_millis(STARTUP_MS_MAX) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "tern dev did not write {} within {STARTUP_MS_MAX} ms",
                    file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Cluster {
            file: cluster,
            child: Some(child),
            data,
            _tmp: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }

    /// Whether we started it.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the `tern dev` we started: SIGTERM, then (bounded) SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("SIGTERM tern dev")?;
        let started = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    eprintln!("tern dev exited with {status}");
                }
                return Ok(());
            }
            if started.elapsed() > Duration::from_millis(SHUTDOWN_MS_MAX) {
                let _ = c.kill();
                let _ = c.wait();
                bail!("tern dev did not stop within {SHUTDOWN_MS_MAX} ms of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the POP named `name`.
    pub fn kill_pop(&self, name: &str) -> Result<()> {
        let pop = self
            .file
            .pops
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no POP {name}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pop.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("SIGKILL POP {name} (pid {})", pop.pid))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Builds the actor component (release) with `tern build`, which prints
/// the component's path last.
pub fn build_actors(tern: &Path) -> Result<PathBuf> {
    build_actors_with(tern, &[])
}

/// [`build_actors`] with cargo features (`v2`: the second version of the
/// code, for the mid-run upgrade).
pub fn build_actors_with(tern: &Path, features: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(tern);
    cmd.arg("build").arg(actors_dir());
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", tern.display()))?;
    if !out.status.success() {
        bail!(
            "`tern build {}` failed ({})",
            actors_dir().display(),
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .last()
        .context("`tern build` printed no component path")?;
    Ok(PathBuf::from(path.trim()))
}

impl Cluster {
    /// The credentials `tern dev` left for its operator: the cluster CA
    /// and the admin token (none for an `--insecure` cluster).
    pub fn admin(&self) -> Result<Credentials> {
        Credentials::of_cluster(&self.file).map_err(|e| anyhow!("{e}"))
    }
}

/// The actor types of doom-lobby.
pub const TYPES: [&str; 3] = ["player", "matchmaker", "match"];

/// Credentials for the players: the admin's CA with a token that may only
/// call doom-lobby's types, made with the admin token (the admin's own
/// credentials on a cluster without tokens).
pub async fn players(endpoint: &str, admin: &Credentials) -> Result<Credentials> {
    if admin.token.is_none() {
        return Ok(admin.clone());
    }
    let mut client = connect(endpoint, admin).await.map_err(|e| anyhow!("{e}"))?;
    let r = client
        .create_token(pb::CreateTokenRequest {
            scopes: vec!["call".into()],
            types: TYPES.iter().map(|t| t.to_string()).collect(),
            label: "doom-lobby players".into(),
        })
        .await
        .map_err(|s| anyhow!("making the players' token: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(admin.clone().with_token(r.token))
}

/// Deploys `component` as `player` (follows its caller), `matchmaker` and
/// `match` (stay where they are) at `endpoint`, with `admin`'s token.
pub async fn deploy(endpoint: &str, admin: &Credentials, component: &[u8]) -> Result<()> {
    let mut client = connect(endpoint, admin).await.map_err(|e| anyhow!("{e}"))?;
    // The matchmaker and the match call other actors inside their turns, and
    // the turn budget is wall-clock time, so it must cover those calls
    // (including a failover wait): give them a generous one.
    for (ty, follow, cpu_ms) in [
        ("player", true, 1_000),
        ("matchmaker", false, 10_000),
        ("match", false, 10_000),
    ] {
        // Zero fields take the POP's defaults.
        let limits = pb::Limits {
            turn_cpu_ms_max: cpu_ms,
            ..Default::default()
        };
        let placement = pb::Placement {
            follow_caller: follow,
            ..Default::default()
        };
        client
            .deploy(pb::DeployRequest {
                r#type: ty.to_string(),
                component: component.to_vec(),
                durability: pb::Durability::Turn as i32,
                limits: Some(limits),
                placement: Some(placement),
                // Actors of an earlier build (a cluster attached to) move
                // to this one at their next activation.
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("deploy {ty}: {:?}: {}", s.code(), s.message()))?;
    }
    Ok(())
}

/// Migrations recorded by the directory, as `(actor, from, to)`, asked of
/// the first POP in `endpoints` that answers (`Status` needs `admin`).
pub async fn migrations(
    endpoints: &[String],
    admin: &Credentials,
) -> Result<Vec<(String, String, String)>> {
    let mut last = anyhow!("no POP to ask");
    for e in endpoints {
        match connect(e, admin).await {
            Ok(mut c) => match c.status(pb::StatusRequest {}).await {
                Ok(s) => {
                    return Ok(s
                        .into_inner()
                        .migrations
                        .into_iter()
                        .map(|m| (m.actor, m.from_pop, m.to_pop))
                        .collect());
                }
                Err(s) => last = anyhow!("status at {e}: {}", s.message()),
            },
            Err(err) => last = anyhow!("{err}"),
        }
    }
    Err(last)
}

/// Deploys `component` as a new version of doom-lobby's three types with
/// `--rollout now` (active actors at every POP move at once). Returns how
/// many active actors moved.
pub async fn upgrade(endpoint: &str, admin: &Credentials, component: &[u8]) -> Result<u64> {
    let mut client = connect(endpoint, admin).await.map_err(|e| anyhow!("{e}"))?;
    let mut moved = 0;
    for ty in TYPES {
        // The running version's settings, so only the code changes.
        let status = client
            .status(pb::StatusRequest {})
            .await
            .map_err(|s| anyhow!("status: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let cur = status
            .types
            .into_iter()
            .find(|t| t.r#type == ty)
            .ok_or_else(|| anyhow!("type `{ty}` is not deployed"))?;
        let placement = pb::Placement {
            follow_caller: ty == "player",
            ..Default::default()
        };
        let r = client
            .deploy(pb::DeployRequest {
                r#type: ty.to_string(),
                component: component.to_vec(),
                durability: cur.durability,
                limits: cur.limits,
                placement: Some(placement),
                rollout: pb::Rollout::Now as i32,
                dry_run: false,
            })
            .await
            .map_err(|s| anyhow!("upgrade {ty}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        moved += r.rolled_now;
    }
    Ok(moved)
}

/// Actors whose latest snapshot the newest version of each type wrote, and
/// the upgrade failures, over doom-lobby's types (with `run` in the id).
pub async fn upgrade_outcome(
    endpoint: &str,
    admin: &Credentials,
    run: &str,
) -> Result<(u64, Vec<String>)> {
    let mut client = connect(endpoint, admin).await.map_err(|e| anyhow!("{e}"))?;
    let (mut on_new, mut failures) = (0, Vec::new());
    for ty in TYPES {
        let v = client
            .versions(pb::VersionsRequest {
                r#type: ty.to_string(),
            })
            .await
            .map_err(|s| anyhow!("versions {ty}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        on_new += v.versions.last().map_or(0, |v| v.actors);
        failures.extend(
            v.failures
                .into_iter()
                .filter(|f| f.actor.contains(run))
                .map(|f| format!("{}: {}", f.actor, f.error)),
        );
    }
    Ok((on_new, failures))
}

//! A throwaway Postgres cluster per durability mode, so the services and
//! pgbench are measured with `fsync` and `synchronous_commit` both off and
//! both on, side by side, without touching the dev cluster everyone's tests
//! use (`fsync` is a server setting).
//!
//! The cluster is made by the project's own `scripts/dev-postgres.sh` with
//! `TA_PG_DATA_DIR` (a separate cluster: system binaries, initdb as the
//! `postgres` user when root, 127.0.0.1 on a port the OS hands out), then
//! the mode is set with `ALTER SYSTEM` and a restart, and checked. The
//! restart also loads `pg_stat_statements`, for each scenario's statement
//! profile.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{Result, psql, unique_name};

/// The durability the services' database and pgbench run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off` (the
    /// dev cluster's settings).
    Off,
    /// `fsync=on`, `synchronous_commit=on`, `full_page_writes=on` (a
    /// production server's).
    On,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
        }
    }

    fn setting(self) -> &'static str {
        self.name()
    }
}

/// A cluster started for one mode; stopped and its data directory deleted
/// on drop.
pub struct Cluster {
    /// Superuser URL of its `ta_bench` database.
    pub url: String,
    pub durability: Durability,
    script: PathBuf,
    root: PathBuf,
    /// Its own port, handed out by the OS: the script's default range is
    /// shared with the dev cluster and the tests' clusters, and a port
    /// picked from it could be taken by another cluster while this one
    /// restarts (its own set-up restarts it once; the chaos run, often).
    port: u16,
}

impl Cluster {
    pub fn start(script: &Path, durability: Durability) -> Result<Self> {
        let root = std::env::temp_dir().join(unique_name("ta-bench-pg"));
        let data_dir = root.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port for the cluster: {e}"))?
            .port();
        let out = script_command(script, &data_dir, port)
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let cluster = Self {
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            durability,
            script: script.to_owned(),
            root,
            port,
        };
        if !out.status.success() || cluster.url.is_empty() {
            return Err(format!(
                "{} start (TA_PG_DATA_DIR={}): {}",
                script.display(),
                data_dir.display(),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let value = durability.setting();
        for setting in ["fsync", "full_page_writes", "synchronous_commit"] {
            psql(
                &cluster.url,
                &format!("ALTER SYSTEM SET {setting} = {value}"),
            )?;
        }
        // Statement statistics for the per-scenario profile: a library loaded
        // at start, so the cluster is restarted (on its recorded port).
        psql(
            &cluster.url,
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        )?;
        for action in ["stop", "start"] {
            let out = script_command(script, &data_dir, port)
                .arg(action)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} {action} (TA_PG_DATA_DIR={}): {}",
                    script.display(),
                    data_dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        // A restart reads the file; a reload would be signalled, not awaited,
        // so the settings are checked before anything runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = psql(
                &cluster.url,
                "SELECT current_setting('fsync') || ',' || current_setting('synchronous_commit') \
                 || ',' || current_setting('full_page_writes')",
            )?;
            if now == format!("{value},{value},{value}") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not take durability {value}: fsync,synchronous_commit,full_page_writes = {now}"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }
}

impl Cluster {
    /// Stops the server (`pg_ctl stop -m fast`: every connection cut, no
    /// wait for the clients) and starts it again on its port: the chaos
    /// run's Postgres restart.
    pub fn restart(&self) -> Result<()> {
        let data_dir = self.root.join("data");
        for action in ["stop", "start"] {
            let out = script_command(&self.script, &data_dir, self.port)
                .arg(action)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", self.script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} {action} (TA_PG_DATA_DIR={}): {}",
                    self.script.display(),
                    data_dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        Ok(())
    }
}

fn script_command(script: &Path, data_dir: &Path, port: u16) -> Command {
    let mut command = Command::new(script);
    command
        // Set, the script would hand back that server instead of starting one.
        .env_remove("DATABASE_URL")
        .env("TA_PG_PORT", port.to_string())
        .env("TA_PG_DATA_DIR", data_dir)
        .env("TA_PG_DB", "ta_bench");
    command
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = script_command(&self.script, &self.root.join("data"), self.port)
            .arg("destroy")
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "could not destroy the cluster in {}: {}",
                self.root.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!(
                "could not destroy the cluster in {}: {e}",
                self.root.display()
            ),
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

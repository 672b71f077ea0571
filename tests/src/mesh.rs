//! A whole mesh on loopback for end-to-end tests: the appliance (gateway +
//! control plane + CA), and service instances that are each a built-in
//! demo service (`meshgate demo service`) behind its own
//! `meshgate-sidecar`, every one a separate process on free ports.
//!
//! The layout is the seed example's: product-catalog (v1 and v2, split
//! 95/5 sticky on `x-user-id`), order-processing (calls product-catalog
//! through its sidecar) and user-account, with only order-processing and
//! the gateway allowed to call product-catalog.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::http1::Client;
use crate::{Gateway, Proc, bin, free_port, tempdir, wait_for, wait_for_port};

/// The trust domain of every lab.
pub const TRUST_DOMAIN: &str = "lab.meshgate.test";

/// The SPIFFE ID of a lab service.
pub fn service_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/service/{name}")
}

/// One service instance: the demo app and its sidecar.
#[derive(Debug)]
pub struct Instance {
    /// Service name.
    pub service: String,
    /// `version` label.
    pub version: String,
    /// Instance id the app reports.
    pub id: String,
    /// The app process (`None`: the test holds the application itself).
    pub app: Option<Proc>,
    /// Where the app listens (plain HTTP, loopback).
    pub app_addr: SocketAddr,
    /// The sidecar process.
    pub sidecar: Proc,
    /// The sidecar's outbound listener (for the app's calls).
    pub outbound: SocketAddr,
    /// The sidecar's inbound mTLS listener.
    pub inbound: SocketAddr,
    /// The sidecar's admin endpoint (metrics).
    pub admin: SocketAddr,
}

/// The appliance and its instances.
#[derive(Debug)]
pub struct MeshLab {
    /// Scratch directory: config, state, token.
    pub dir: PathBuf,
    /// The appliance process.
    pub appliance: Gateway,
    /// The gateway's plaintext listener.
    pub edge: SocketAddr,
    /// The control plane.
    pub control_plane: SocketAddr,
    /// The admin endpoint (metrics).
    pub admin: SocketAddr,
    /// Every instance started, in order.
    pub instances: Vec<Instance>,
    config: PathBuf,
    /// Bearer token for the admin API of sidecars started from now on
    /// (`--admin-token-file`); `None`: read-only sidecar admin APIs.
    pub sidecar_admin_token: Option<String>,
}

/// Options for [`MeshLab::start`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// `[mesh] workload_cert_ttl`.
    pub cert_ttl: &'static str,
    /// `[mesh] mode`.
    pub mode: &'static str,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            cert_ttl: "1h",
            mode: "strict",
        }
    }
}

impl MeshLab {
    /// Writes the config and starts the appliance; no instances yet.
    pub fn start(opts: LabOptions) -> Result<MeshLab> {
        MeshLab::start_with(opts, "")
    }

    /// Like [`MeshLab::start`], with `extra_config` (TOML, such as an
    /// `[observability.tracing]` table) appended to the appliance's config.
    pub fn start_with(opts: LabOptions, extra_config: &str) -> Result<MeshLab> {
        let dir = tempdir()?;
        let edge = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let control_plane = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(dir.join("join-token"), "lab-join-token\n")?;
        let config = dir.join("meshgate.toml");
        let text = lab_config(&dir, edge, control_plane, admin, &opts) + extra_config;
        std::fs::write(&config, text)?;
        let appliance = Gateway::start(&config, edge)?;
        let lab = MeshLab {
            dir,
            appliance,
            edge,
            control_plane,
            admin,
            instances: Vec::new(),
            config,
            sidecar_admin_token: None,
        };
        wait_for(Duration::from_secs(20), "trust bundle written", || {
            lab.trust_bundle().exists()
        })?;
        Ok(lab)
    }

    /// The trust bundle the appliance writes for sidecars.
    pub fn trust_bundle(&self) -> PathBuf {
        self.dir.join("state/ca/trust-bundle.pem")
    }

    /// The CA certificate and key (generated under the state directory).
    pub fn ca_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("state/ca/ca.pem"),
            self.dir.join("state/ca/ca-key.pem"),
        )
    }

    /// Starts an instance of `service` with label `version`; with
    /// `calls`, the app calls that service through its sidecar. Waits
    /// until the sidecar's listeners accept. Returns its index.
    pub fn add(&mut self, service: &str, version: &str, calls: Option<&str>) -> Result<usize> {
        let id = format!("{service}-{}", self.instances.len());
        let app_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(bin("meshgate"));
        cmd.args(["demo", "service", "--name", service, "--version", version])
            .args(["--instance", &id, "--listen", &app_addr.to_string()]);
        if let Some(up) = calls {
            cmd.args([
                "--upstream-service",
                up,
                "--outbound",
                &outbound.to_string(),
            ]);
        }
        let app = Proc::spawn(cmd)?;
        wait_for_port(app_addr).with_context(|| format!("app {id}: {}", app.stderr()))?;
        self.add_app(service, version, Some(app), app_addr, outbound, &[])
    }

    /// Starts a sidecar for `service` (with `sidecar_args` added to its
    /// command line) in front of an application already listening at
    /// `app_addr`, with its outbound port at `outbound`. Returns its index.
    pub fn add_app(
        &mut self,
        service: &str,
        version: &str,
        app: Option<Proc>,
        app_addr: SocketAddr,
        outbound: SocketAddr,
        sidecar_args: &[&str],
    ) -> Result<usize> {
        let n = self.instances.len();
        let id = format!("{service}-{n}");
        let inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sidecar = self.spawn_sidecar(
            service,
            version,
            app_addr,
            [inbound, outbound, admin],
            sidecar_args,
        )?;
        self.instances.push(Instance {
            service: service.to_owned(),
            version: version.to_owned(),
            id,
            app,
            app_addr,
            sidecar,
            outbound,
            inbound,
            admin,
        });
        Ok(n)
    }

    fn spawn_sidecar(
        &self,
        service: &str,
        version: &str,
        app: SocketAddr,
        [inbound, outbound, admin]: [SocketAddr; 3],
        extra_args: &[&str],
    ) -> Result<Proc> {
        let mut cmd = Command::new(bin("meshgate-sidecar"));
        cmd.args(["--control-plane", &self.control_plane.to_string()])
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--ca-file")
            .arg(self.trust_bundle())
            .args([
                "--service",
                service,
                "--label",
                &format!("version={version}"),
            ])
            .args(["--app", &app.to_string()])
            .args(["--inbound", &inbound.to_string()])
            .args(["--outbound", &outbound.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--join-token-file")
            .arg(self.dir.join("join-token"))
            .args(extra_args);
        if let Some(token) = &self.sidecar_admin_token {
            let file = self.dir.join(format!("admin-token-{}", free_port()));
            std::fs::write(&file, token)?;
            cmd.arg("--admin-token-file").arg(file);
        }
        let mut proc = Proc::spawn(cmd)?;
        for addr in [outbound, inbound] {
            if let Err(e) = wait_for_port(addr) {
                let _ = proc.running();
                bail!("sidecar of {service}: {e}\nstderr:\n{}", proc.stderr());
            }
        }
        Ok(proc)
    }

    /// Stops the appliance (SIGKILL: a crash, nothing saved on the way
    /// out) and starts it again with the same config and state.
    pub fn restart_appliance(&mut self) -> Result<()> {
        self.appliance.proc.signal("KILL")?;
        self.appliance.proc.wait_exit(Duration::from_secs(10))?;
        self.appliance = Gateway::start(&self.config, self.edge)?;
        Ok(())
    }

    /// Waits until the appliance has every started instance in its
    /// registry, then until `path` answers 200 through the gateway for
    /// each of `versions` (forced with `x-canary`).
    pub fn wait_serving(&self, path: &str, versions: &[&str]) -> Result<()> {
        let want = format!("instances={}", self.instances.len());
        wait_for(Duration::from_secs(30), "every instance registered", || {
            self.appliance
                .proc
                .stderr()
                .lines()
                .rfind(|l| l.contains("mesh endpoints changed"))
                .is_some_and(|l| l.contains(&want))
        })
        .with_context(|| self.appliance.proc.stderr())?;
        let mut client = Client::new(self.edge);
        for v in versions {
            wait_for(Duration::from_secs(30), "serving", || {
                client
                    .get(path, &[("x-canary", v)])
                    .is_ok_and(|r| r.status == 200)
            })
            .with_context(|| format!("{path} with x-canary {v}"))?;
        }
        Ok(())
    }

    /// Sets the demo flaky switch of instance `i` (percent of requests
    /// answered 503), talking to the app directly.
    pub fn set_flaky(&self, i: usize, percent: u32) -> Result<()> {
        let url = format!(
            "http://{}/demo/flaky?percent={percent}",
            self.instances[i].app_addr
        );
        let r = crate::curl(&["-X", "POST", &url])?;
        if r.status != 200 {
            bail!("flaky switch answered {}", r.status);
        }
        Ok(())
    }

    /// The appliance's config file.
    pub fn config(&self) -> &Path {
        &self.config
    }
}

fn lab_config(
    dir: &Path,
    edge: SocketAddr,
    cp: SocketAddr,
    admin: SocketAddr,
    opts: &LabOptions,
) -> String {
    let td = TRUST_DOMAIN;
    format!(
        r#"[admin]
address = "{admin}"

[[listener]]
name = "edge"
address = "{edge}"
protocols = ["http1", "h2c"]

[[route]]
name = "catalog"
match = {{ path_prefix = "/catalog" }}
service = "product-catalog"
timeout = "10s"
retry = {{ max_retries = 2, on = ["gateway-error", "connect-failure", "reset"], backoff_base = "5ms", backoff_max = "20ms" }}

[[route]]
name = "orders"
match = {{ path_prefix = "/orders" }}
service = "order-processing"
timeout = "10s"
retry = {{ max_retries = 2, on = ["gateway-error", "connect-failure", "reset"], backoff_base = "5ms", backoff_max = "20ms" }}

[[route]]
name = "users"
match = {{ path_prefix = "/users" }}
service = "user-account"
timeout = "10s"

[[service]]
name = "product-catalog"
discovery = "mesh"
connect_timeout = "500ms"

[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}

[[service.subset]]
name = "v2"
labels = {{ version = "v2" }}

[service.split]
targets = [{{ subset = "v1", weight = 95 }}, {{ subset = "v2", weight = 5 }}]
sticky = {{ header = "x-user-id" }}
override_header = "x-canary"

[service.outlier_detection]
consecutive_failures = 3
base_ejection = "30s"
max_ejected_percent = 50

[service.retry_budget]
ratio_percent = 50
min_retries_per_second = 50

[service.calls]
timeout = "10s"
retry = {{ max_retries = 2, on = ["gateway-error", "connect-failure", "reset"], backoff_base = "5ms", backoff_max = "20ms" }}

[[service]]
name = "order-processing"
discovery = "mesh"

[[service]]
name = "user-account"
discovery = "mesh"

[mesh]
trust_domain = "{td}"
workload_cert_ttl = "{ttl}"
mode = "{mode}"
control_plane_address = "{cp}"
state_dir = "{state}"
join_token_file = "{token}"

[[mesh.authorization]]
service = "product-catalog"
allow = ["spiffe://{td}/service/order-processing", "spiffe://{td}/gateway"]
"#,
        ttl = opts.cert_ttl,
        mode = opts.mode,
        state = dir.join("state").display(),
        token = dir.join("join-token").display(),
    )
}

//! The control plane hosted by the appliance: the mesh CA, the service
//! registry fed by sidecars, and the gateway's own mesh identity.
//!
//! It starts when the config has mesh services (`discovery = "mesh"` or
//! `tls = "mesh"`). The CA comes from `[mesh] ca_cert_file`/`ca_key_file`
//! or is generated on first start under `state_dir/ca`; either way the
//! trust bundle is written to `state_dir/ca/trust-bundle.pem`, the file
//! sidecars verify the control plane with (`--ca-file`). The registry is
//! saved to `state_dir/registry.json`, so a restarted appliance keeps
//! routing to the instances it knew while their sidecars reconnect.
//!
//! Registry changes reach the gateway's own routing as discovered
//! endpoints in the config store (a new snapshot version, like a reload),
//! and reach sidecars as a freshly rendered config on their stream.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use meshgate_config::{
    CaSource, ConfigSource, ConfigStore, Discovered, Discovery, EndpointSpec, ReloadOutcome,
    Snapshot, UpstreamTls,
};
use meshgate_control::{ControlPlane, ServerOptions, SignedCert, Signer};
use meshgate_identity::{Ca, SpiffeId};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::mesh::MeshTls;

/// How often sidecars heart-beat; an instance silent for three of these
/// leaves the registry.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Does this config need the control plane?
pub(crate) fn wanted(snap: &Snapshot) -> bool {
    snap.services
        .iter()
        .any(|s| s.discovery == Discovery::Mesh || s.tls == UpstreamTls::Mesh)
}

/// The CA as the control plane's signer.
#[derive(Debug)]
struct CaSigner {
    ca: Arc<RwLock<Ca>>,
    ttl: Duration,
}

impl Signer for CaSigner {
    fn sign(&self, service: &str, csr_pem: &str) -> Result<SignedCert, String> {
        let ca = self.ca.read().unwrap_or_else(|p| p.into_inner());
        let id = SpiffeId::service(ca.trust_domain(), service).map_err(|e| e.to_string())?;
        let issued = ca
            .sign_csr(csr_pem, &id, self.ttl)
            .map_err(|e| e.to_string())?;
        Ok(SignedCert {
            identity: id.to_string(),
            chain_pem: issued.chain_pem,
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }

    fn trust_bundle_pem(&self) -> String {
        self.ca
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .trust_bundle_pem()
    }
}

/// The control plane's own TLS certificate, renewed in place.
#[derive(Debug)]
struct ServerCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())
}

/// Loads or creates the CA, gives the gateway its identity, and starts
/// the control plane on its own thread. Errors are fatal at start.
pub(crate) fn start(store: &Arc<ConfigStore>, mesh: &Arc<MeshTls>) -> Result<(), String> {
    let snap = store.current();
    let m = &snap.mesh;
    let td = m.trust_domain.as_str();
    let ca_dir = m.state_dir.join("ca");
    let ca = match &m.ca {
        CaSource::Generated => Ca::load_or_generate(&ca_dir, td),
        CaSource::Files { cert, key } => Ca::from_files(td, cert, key),
    }
    .map_err(|e| format!("mesh CA: {e}"))?;
    std::fs::create_dir_all(&ca_dir)
        .map_err(|e| format!("cannot create {}: {e}", ca_dir.display()))?;
    let bundle_path = ca_dir.join("trust-bundle.pem");
    write_atomic(&bundle_path, &ca.trust_bundle_pem())?;

    let ttl = m.workload_cert_ttl;
    let ca = Arc::new(RwLock::new(ca));
    let gateway_id = SpiffeId::gateway(td).map_err(|e| e.to_string())?;
    let cp_id = SpiffeId::control_plane(td).map_err(|e| e.to_string())?;
    let cp_cert = {
        let ca = ca.read().unwrap_or_else(|p| p.into_inner());
        let (key, issued) = ca.issue(&gateway_id, ttl).map_err(|e| e.to_string())?;
        mesh.install(&issued.chain_pem, &key.key_pem(), &ca.trust_bundle_pem())
            .map_err(|e| format!("gateway identity: {e}"))?;
        let (key, issued) = ca.issue(&cp_id, ttl).map_err(|e| e.to_string())?;
        Arc::new(ServerCert(ArcSwap::from_pointee(certified(
            &issued.chain_pem,
            &key.key_pem(),
        )?)))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cp_cert.clone());
    tls.alpn_protocols = Vec::new();
    let tls = Arc::new(tls);

    let cp = ControlPlane::new(
        Arc::new(CaSigner {
            ca: ca.clone(),
            ttl,
        }),
        ServerOptions {
            join_token: m.join_token.as_ref().map(|t| t.expose().to_owned()),
            heartbeat_interval: HEARTBEAT,
            heartbeat_timeout: HEARTBEAT * 3,
            state_file: Some(m.state_dir.join("registry.json")),
        },
    );
    let source = config_text(store)?;
    cp.set_config(&source)
        .map_err(|e| format!("control plane: {e}"))?;
    let listener = StdListener::bind(m.control_plane_address)
        .map_err(|e| format!("control plane cannot bind {}: {e}", m.control_plane_address))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("control plane socket: {e}"))?;
    tracing::info!(
        address = %m.control_plane_address,
        trust_domain = td,
        trust_bundle = %bundle_path.display(),
        "control plane listening"
    );

    let store = store.clone();
    let mesh = mesh.clone();
    crate::server::spawn_runtime("control-plane", async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control plane socket");
                return;
            }
        };
        tokio::spawn(cp.clone().serve(listener, tls));
        let identities = Arc::new(Identities {
            ca,
            ttl,
            gateway_id,
            cp_id,
            mesh,
            cp_cert,
        });
        tokio::spawn(renew(identities.clone()));
        follow(cp, store, identities, ca_dir).await;
    })?;
    Ok(())
}

/// Keeps the store's discovered endpoints equal to the registry, and the
/// sidecars' config equal to the applied config file.
async fn follow(
    cp: Arc<ControlPlane>,
    store: Arc<ConfigStore>,
    ids: Arc<Identities>,
    ca_dir: PathBuf,
) {
    let mut registry = cp.watch();
    let mut applied = store.current().source_digest().to_owned();
    let mut ca_files = ca_fingerprint(&store.current(), &ca_dir);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // What the store last got: the loop also wakes for the config and CA
    // checks, and an unchanged registry must not rebuild the snapshot.
    let mut last: Option<Discovered> = None;
    loop {
        let instances = cp.instances();
        let mut discovered = Discovered::new();
        for i in &instances {
            discovered
                .entry(i.service.clone())
                .or_default()
                .push(EndpointSpec {
                    address: i.address,
                    labels: i.labels.clone(),
                    weight: 1,
                });
        }
        for eps in discovered.values_mut() {
            eps.sort_by_key(|e| e.address);
        }
        if last.as_ref() != Some(&discovered) {
            if let Some(m) = crate::metrics::metrics() {
                for svc in store.current().services.iter() {
                    if svc.discovery == Discovery::Mesh {
                        let n = discovered.get(&svc.name).map_or(0, Vec::len);
                        m.mesh_endpoints
                            .with_label_values(&[svc.name.as_str()])
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
            }
            last = Some(discovered.clone());
            if let ReloadOutcome::Applied { version, .. } = store.set_discovered(discovered) {
                tracing::info!(
                    version,
                    instances = instances.len(),
                    "mesh endpoints changed"
                );
            }
        }
        tokio::select! {
            changed = registry.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                let snap = store.current();
                let now = ca_fingerprint(&snap, &ca_dir);
                if now != ca_files {
                    ca_files = now;
                    reload_ca(&snap, &ca_dir, &ids, &cp);
                }
                if snap.source_digest() != applied {
                    applied = snap.source_digest().to_owned();
                    // Services may have joined or left the mesh.
                    last = None;
                    match config_text(&store) {
                        Ok(text) => {
                            if let Err(e) = cp.set_config(&text) {
                                tracing::error!(error = %e, "control plane kept the previous sidecar config");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot re-read the config for sidecars"),
                    }
                }
            }
        }
    }
}

/// What the appliance issues to itself from the CA in process.
#[derive(Debug)]
struct Identities {
    ca: Arc<RwLock<Ca>>,
    ttl: Duration,
    gateway_id: SpiffeId,
    cp_id: SpiffeId,
    mesh: Arc<MeshTls>,
    cp_cert: Arc<ServerCert>,
}

impl Identities {
    /// Issues fresh certificates for the gateway and the control plane.
    fn reissue(&self) {
        let ca = self.ca.read().unwrap_or_else(|p| p.into_inner());
        let bundle = ca.trust_bundle_pem();
        match ca.issue(&self.gateway_id, self.ttl) {
            Ok((key, issued)) => {
                match self
                    .mesh
                    .install(&issued.chain_pem, &key.key_pem(), &bundle)
                {
                    Ok(m) => tracing::info!(identity = %m.id, "gateway certificate renewed"),
                    Err(e) => tracing::error!(error = %e, "renewed gateway certificate refused"),
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot renew the gateway certificate"),
        }
        match ca
            .issue(&self.cp_id, self.ttl)
            .map_err(|e| e.to_string())
            .and_then(|(key, issued)| certified(&issued.chain_pem, &key.key_pem()))
        {
            Ok(c) => self.cp_cert.0.store(Arc::new(c)),
            Err(e) => tracing::error!(error = %e, "cannot renew the control plane certificate"),
        }
    }
}

/// Renews the gateway's and the control plane's certificates at half
/// what is left of their lifetime.
async fn renew(ids: Arc<Identities>) {
    loop {
        // Half of what is left: certificates are backdated a little for
        // clock skew, so their nominal lifetime overstates what we have.
        let wait = ids
            .mesh
            .material()
            .and_then(|m| m.not_after.duration_since(SystemTime::now()).ok())
            .map(|left| left / 2)
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        ids.reissue();
    }
}

/// The CA's files as they are now, to notice a rotation.
fn ca_fingerprint(snap: &Snapshot, ca_dir: &Path) -> Vec<Vec<u8>> {
    let files: Vec<PathBuf> = match &snap.mesh.ca {
        CaSource::Generated => ["ca.pem", "ca-key.pem", "previous-roots.pem"]
            .iter()
            .map(|f| ca_dir.join(f))
            .collect(),
        CaSource::Files { cert, key } => vec![cert.clone(), key.clone()],
    };
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

/// A rotated (or replaced) CA on disk: load it, keep trusting the old
/// root, hand every sidecar the new trust bundle at once, and issue from
/// the new CA from now on. Sidecars move to the new CA as they renew, and
/// both roots stay in the bundle meanwhile, so no connection fails. A CA
/// that does not load changes nothing.
fn reload_ca(snap: &Snapshot, ca_dir: &Path, ids: &Arc<Identities>, cp: &ControlPlane) {
    let td = snap.mesh.trust_domain.as_str();
    let loaded = match &snap.mesh.ca {
        CaSource::Generated => Ca::load_or_generate(ca_dir, td),
        CaSource::Files { cert, key } => Ca::from_files(td, cert, key),
    };
    let mut next = match loaded {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!(error = %e, "the CA files changed but do not load; still issuing from the running CA");
            return;
        }
    };
    {
        let mut ca = ids.ca.write().unwrap_or_else(|p| p.into_inner());
        if next.root_pem() == ca.root_pem() && next.trust_bundle_pem() == ca.trust_bundle_pem() {
            return;
        }
        // An operator's replacement CA (files mode) has no
        // previous-roots file: keep trusting the old root until restart.
        if matches!(snap.mesh.ca, CaSource::Files { .. })
            && next.root_pem() != ca.root_pem()
            && let Err(e) = next.add_trusted_roots(ca.root_pem())
        {
            tracing::error!(error = %e, "cannot keep trusting the previous root");
        }
        *ca = next;
        if let Err(e) = write_atomic(&ca_dir.join("trust-bundle.pem"), &ca.trust_bundle_pem()) {
            tracing::error!(error = %e, "cannot write the trust bundle");
        }
        tracing::info!(
            roots = ca.trust_bundle_pem().matches("BEGIN CERTIFICATE").count(),
            "mesh CA reloaded; pushing the new trust bundle"
        );
    }
    cp.trust_bundle_changed();
    // Our own certificates move to the new CA once the sidecars have had
    // a moment to take the bundle that trusts it.
    let ids = ids.clone();
    tokio::spawn(async move {
        tokio::time::sleep(HEARTBEAT * 2).await;
        ids.reissue();
    });
}

/// The operator's config text, which sidecar configs are rendered from.
fn config_text(store: &ConfigStore) -> Result<String, String> {
    match store.source() {
        ConfigSource::File(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        ConfigSource::Embedded | ConfigSource::ControlPlane => Ok(String::new()),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

//! The CA's state directory: `ca.pem`, `ca-key.pem` and, during a root
//! rotation, `previous-roots.pem`.
//!
//! Every file is replaced by writing a temporary file in the same directory,
//! syncing it and renaming it over the old one, so a crash leaves either the
//! old or the new contents, never half a key.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::certificate::{certs_der_named, to_pem};
use crate::{Ca, IdentityError};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const PREVIOUS_ROOTS: &str = "previous-roots.pem";

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
/// Certificates are public; other local tools (a sidecar injector, an
/// operator's `openssl x509`) may read them.
const CERT_MODE: u32 = 0o644;

pub(crate) fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Ca, IdentityError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let mut ca = match (present(&cert_path)?, present(&key_path)?) {
        (true, true) => Ca::from_files(trust_domain, &cert_path, &key_path)?,
        (false, false) => {
            // Generated first: an invalid trust domain must fail before the
            // directory is created.
            let ca = Ca::generate(trust_domain)?;
            create_dir(dir)?;
            write_ca(dir, &ca)?;
            ca
        }
        (true, false) => {
            return Err(state_dir(
                dir,
                format!(
                    "{CA_CERT} exists but {CA_KEY} is missing; restore the key \
                     (a new root would not be trusted by the workloads that hold the current one)"
                ),
            ));
        }
        (false, true) => {
            return Err(state_dir(
                dir,
                format!(
                    "{CA_KEY} exists without {CA_CERT}; restore {CA_CERT}, \
                     or remove {CA_KEY} to generate a new ca"
                ),
            ));
        }
    };
    load_previous_roots(dir, &mut ca)?;
    Ok(ca)
}

/// Root rotation under a state dir: generates a new CA into dir (ca.pem/ca-key.pem), moves the old root to dir/previous-roots.pem so load_or_generate keeps trusting it (its bundle holds both) until `retire_previous_roots(dir)` is called.
///
/// The old root is saved before the new pair is written. Writing the new key
/// and certificate is two renames; if the process dies between them,
/// [`Ca::load_or_generate`] reports a mismatched pair and running `rotate`
/// again completes the rotation (the old root is already saved).
pub fn rotate(dir: &Path, trust_domain: &str) -> Result<Ca, IdentityError> {
    // Everything is generated and checked before the directory is touched.
    let mut ca = Ca::generate(trust_domain)?;
    let cert_path = dir.join(CA_CERT);
    let prev_path = dir.join(PREVIOUS_ROOTS);
    let mut roots = if present(&prev_path)? {
        read_roots(&prev_path)?
    } else {
        Vec::new()
    };
    if present(&cert_path)? {
        let old_pem = read(&cert_path)?;
        for der in certs_der_named(&old_pem, &cert_path.display().to_string())? {
            if !roots.contains(&der) {
                roots.push(der);
            }
        }
    }
    let roots_pem: String = roots.iter().map(|der| to_pem("CERTIFICATE", der)).collect();
    if !roots.is_empty() {
        // Also checks that each is a CA certificate, so that what is saved
        // now will load later.
        ca.add_trusted_roots_named(&roots_pem, &prev_path.display().to_string())?;
    }

    create_dir(dir)?;
    if !roots.is_empty() {
        write_atomic(&prev_path, roots_pem.as_bytes(), CERT_MODE)?;
    }
    write_ca(dir, &ca)?;
    Ok(ca)
}

/// Ends a rotation: forgets the roots in dir/previous-roots.pem. Call it
/// once every workload holds a certificate from the new root. Succeeds if
/// there is nothing to retire.
pub fn retire_previous_roots(dir: &Path) -> Result<(), IdentityError> {
    let path = dir.join(PREVIOUS_ROOTS);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IdentityError::Io {
            op: "removing",
            path,
            source,
        }),
    }
}

fn load_previous_roots(dir: &Path, ca: &mut Ca) -> Result<(), IdentityError> {
    let path = dir.join(PREVIOUS_ROOTS);
    if !present(&path)? {
        return Ok(());
    }
    let pem = read(&path)?;
    if pem.trim().is_empty() {
        return Ok(());
    }
    ca.add_trusted_roots_named(&pem, &path.display().to_string())
}

fn read_roots(path: &Path) -> Result<Vec<Vec<u8>>, IdentityError> {
    let pem = read(path)?;
    if pem.trim().is_empty() {
        return Ok(Vec::new());
    }
    certs_der_named(&pem, &path.display().to_string())
}

/// The key goes first: `ca.pem` appearing is what marks the pair complete.
fn write_ca(dir: &Path, ca: &Ca) -> Result<(), IdentityError> {
    write_atomic(&dir.join(CA_KEY), ca.key_pem().as_bytes(), KEY_MODE)?;
    write_atomic(&dir.join(CA_CERT), ca.root_pem().as_bytes(), CERT_MODE)
}

/// Whether something is at `path`. A dangling symlink counts: it most likely
/// points at an operator's CA on a volume that is not mounted yet, and must
/// not be mistaken for a first start.
fn present(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(IdentityError::Io {
            op: "checking",
            path: path.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Creates the directory (0700) if it is missing. An existing directory keeps
/// the mode the operator gave it.
fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(|source| IdentityError::Io {
        op: "creating directory",
        path: dir.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    // Unique per process and call, so two writers never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_new(&tmp, contents, mode).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| IdentityError::Io {
            op: "renaming into place",
            path: path.to_owned(),
            source,
        })
    });
    if result.is_err() {
        // Best effort: the error being returned matters more than the
        // leftover temp file.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

fn write_new(tmp: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io_err = |op: &'static str| {
        let path: PathBuf = tmp.to_owned();
        move |source| IdentityError::Io { op, path, source }
    };
    let mut options = fs::OpenOptions::new();
    // create_new: the name is unique to this call, so an existing file is
    // someone else's, not ours to overwrite.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(tmp).map_err(io_err("creating"))?;
    // The mode given at creation is masked by the umask; set it exactly so
    // certificates stay readable and the key stays private either way.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io_err("setting permissions on"))?;
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents).map_err(io_err("writing"))?;
    file.sync_all().map_err(io_err("syncing"))
}

/// Makes a rename durable: without syncing the directory, a power loss can
/// bring back the old name.
fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Io {
            op: "syncing directory",
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn state_dir(dir: &Path, reason: String) -> IdentityError {
    IdentityError::StateDir {
        dir: dir.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::time::Duration;

    use super::*;
    use crate::SpiffeId;
    use crate::ca::tests::{verify_as_client, verify_as_server};

    const TD: &str = "mesh.test";
    const HOUR: Duration = Duration::from_secs(3600);

    /// A fresh directory under the system temp dir, removed on drop. `path`
    /// itself does not exist yet, so tests see a true first start.
    struct TempDir {
        base: PathBuf,
        path: PathBuf,
    }

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let base = std::env::temp_dir().join(format!(
                "meshgate-identity-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&base).unwrap();
            let path = base.join("state");
            TempDir { base, path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    #[test]
    fn load_or_generate_twice_yields_the_same_root() {
        let dir = TempDir::new();
        let first = Ca::load_or_generate(&dir.path, TD).unwrap();
        let second = Ca::load_or_generate(&dir.path, TD).unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        assert_eq!(first.trust_bundle_pem(), second.trust_bundle_pem());
        assert_eq!(
            fs::read_to_string(dir.path.join(CA_CERT)).unwrap(),
            first.root_pem()
        );
        // The reloaded CA signs leaves that chain to the first one's root.
        let id = SpiffeId::service(TD, "api").unwrap();
        let (_, issued) = second.issue(&id, HOUR).unwrap();
        verify_as_client(first.root_pem(), &issued.chain_pem).unwrap();
        // No temp files left behind.
        let mut names: Vec<_> = fs::read_dir(&dir.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [CA_KEY, CA_CERT]);
    }

    #[cfg(unix)]
    #[test]
    fn key_is_0600_and_new_dir_is_0700() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        Ca::load_or_generate(&dir.path, TD).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path.join(CA_KEY)), 0o600);
        assert_eq!(mode(&dir.path.join(CA_CERT)), 0o644);
        assert_eq!(mode(&dir.path), 0o700);
    }

    #[test]
    fn mangled_ca_pem_is_an_error_and_is_left_alone() {
        let dir = TempDir::new();
        Ca::load_or_generate(&dir.path, TD).unwrap();
        let cert_path = dir.path.join(CA_CERT);
        let key_before = fs::read(dir.path.join(CA_KEY)).unwrap();
        let mangled = fs::read_to_string(&cert_path)
            .unwrap()
            .replacen('M', "x", 3);
        fs::write(&cert_path, &mangled).unwrap();

        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(err.to_string().contains(CA_CERT), "{err}");
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), mangled);
        assert_eq!(fs::read(dir.path.join(CA_KEY)).unwrap(), key_before);

        fs::write(&cert_path, "").unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(err.to_string().contains(CA_CERT), "{err}");
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let dir = TempDir::new();
        Ca::load_or_generate(&dir.path, TD).unwrap();
        let other = Ca::generate(TD).unwrap();
        fs::write(dir.path.join(CA_KEY), other.key_pem()).unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(CA_KEY) && msg.contains(CA_CERT), "{msg}");
    }

    #[test]
    fn half_a_pair_is_an_error_not_a_new_root() {
        let dir = TempDir::new();
        Ca::load_or_generate(&dir.path, TD).unwrap();
        let key = fs::read(dir.path.join(CA_KEY)).unwrap();

        fs::remove_file(dir.path.join(CA_KEY)).unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(matches!(err, IdentityError::StateDir { .. }), "{err}");
        assert!(!dir.path.join(CA_KEY).exists());

        fs::write(dir.path.join(CA_KEY), key).unwrap();
        fs::remove_file(dir.path.join(CA_CERT)).unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(matches!(err, IdentityError::StateDir { .. }), "{err}");
        assert!(!dir.path.join(CA_CERT).exists());
    }

    #[cfg(unix)]
    #[test]
    fn dangling_symlink_is_not_a_first_start() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.path).unwrap();
        std::os::unix::fs::symlink(dir.base.join("unmounted/ca.pem"), dir.path.join(CA_CERT))
            .unwrap();
        std::os::unix::fs::symlink(dir.base.join("unmounted/ca-key.pem"), dir.path.join(CA_KEY))
            .unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(matches!(err, IdentityError::Io { .. }), "{err}");
        assert!(err.to_string().contains(CA_CERT), "{err}");
    }

    #[test]
    fn from_files_errors_name_the_file() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.path).unwrap();
        let cert = dir.path.join("operator-ca.pem");
        let key = dir.path.join("operator-ca-key.pem");
        let err = Ca::from_files(TD, &cert, &key).unwrap_err();
        assert!(err.to_string().contains("operator-ca.pem"), "{err}");

        fs::write(&cert, "junk").unwrap();
        fs::write(&key, "junk").unwrap();
        let err = Ca::from_files(TD, &cert, &key).unwrap_err();
        assert!(err.to_string().contains("operator-ca.pem"), "{err}");

        let ca = Ca::generate(TD).unwrap();
        fs::write(&cert, ca.root_pem()).unwrap();
        let err = Ca::from_files(TD, &cert, &key).unwrap_err();
        assert!(err.to_string().contains("operator-ca-key.pem"), "{err}");

        fs::write(&key, ca.key_pem()).unwrap();
        let loaded = Ca::from_files(TD, &cert, &key).unwrap();
        assert_eq!(loaded.root_pem(), ca.root_pem());
    }

    #[test]
    fn rotation_trusts_both_roots_until_retired() {
        let dir = TempDir::new();
        let old = Ca::load_or_generate(&dir.path, TD).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let dns = "api.service.mesh.test";
        let (_, old_leaf) = old.issue(&id, HOUR).unwrap();

        let new = rotate(&dir.path, TD).unwrap();
        assert_ne!(new.root_pem(), old.root_pem());
        let bundle = new.trust_bundle_pem();
        assert!(bundle.contains(old.root_pem()) && bundle.contains(new.root_pem()));
        assert_eq!(new.trust_bundle_der().len(), 2);

        // Workloads still on the old root and ones on the new root both verify.
        let (_, new_leaf) = new.issue(&id, HOUR).unwrap();
        verify_as_server(&bundle, &old_leaf.chain_pem, dns).unwrap();
        verify_as_client(&bundle, &old_leaf.chain_pem).unwrap();
        verify_as_server(&bundle, &new_leaf.chain_pem, dns).unwrap();
        // A workload that has not fetched the new bundle yet still trusts
        // only the old root; that is why the overlap exists.
        assert!(verify_as_client(old.root_pem(), &new_leaf.chain_pem).is_err());

        // A restart during the overlap keeps both.
        let reloaded = Ca::load_or_generate(&dir.path, TD).unwrap();
        assert_eq!(reloaded.root_pem(), new.root_pem());
        assert_eq!(reloaded.trust_bundle_pem(), bundle);

        retire_previous_roots(&dir.path).unwrap();
        let retired = Ca::load_or_generate(&dir.path, TD).unwrap();
        assert_eq!(retired.trust_bundle_pem(), new.root_pem());
        assert!(verify_as_client(&retired.trust_bundle_pem(), &old_leaf.chain_pem).is_err());
        verify_as_client(&retired.trust_bundle_pem(), &new_leaf.chain_pem).unwrap();
        // Nothing left to retire is fine.
        retire_previous_roots(&dir.path).unwrap();
    }

    #[test]
    fn rotating_twice_keeps_every_unretired_root() {
        let dir = TempDir::new();
        let first = Ca::load_or_generate(&dir.path, TD).unwrap();
        let second = rotate(&dir.path, TD).unwrap();
        let third = rotate(&dir.path, TD).unwrap();
        let bundle = third.trust_bundle_der();
        assert_eq!(bundle.len(), 3);
        for root in [&first, &second, &third] {
            assert!(bundle.iter().any(|der| der == root.root_der()));
        }
        assert_eq!(
            crate::certs_der(&fs::read_to_string(dir.path.join(PREVIOUS_ROOTS)).unwrap())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn rotate_on_an_empty_dir_just_generates() {
        let dir = TempDir::new();
        let ca = rotate(&dir.path, TD).unwrap();
        assert_eq!(ca.trust_bundle_pem(), ca.root_pem());
        assert!(!dir.path.join(PREVIOUS_ROOTS).exists());
        let loaded = Ca::load_or_generate(&dir.path, TD).unwrap();
        assert_eq!(loaded.root_pem(), ca.root_pem());
    }

    #[test]
    fn corrupt_previous_roots_is_an_error() {
        let dir = TempDir::new();
        Ca::load_or_generate(&dir.path, TD).unwrap();
        fs::write(
            dir.path.join(PREVIOUS_ROOTS),
            "-----BEGIN CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Ca::load_or_generate(&dir.path, TD).unwrap_err();
        assert!(err.to_string().contains(PREVIOUS_ROOTS), "{err}");
        assert!(rotate(&dir.path, TD).is_err());
    }

    #[test]
    fn invalid_trust_domain_touches_nothing() {
        let dir = TempDir::new();
        assert!(Ca::load_or_generate(&dir.path, "Not Valid").is_err());
        assert!(rotate(&dir.path, "Not Valid").is_err());
        assert!(!dir.path.exists());
    }
}

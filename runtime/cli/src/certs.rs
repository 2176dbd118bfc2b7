//! Certificates for a cluster (`tern certs`, and `tern dev` into its data
//! directory), made with rcgen.
//!
//! A directory of certificates holds:
//! - `ca.pem` and `ca.key`: the cluster CA (ECDSA P-256). Keep `ca.key`
//!   off the POPs in production: it mints identities;
//! - `directory.pem`/`.key`: common name `directory`;
//! - `pop-<name>.pem`/`.key`: common name `pop:<name>`, the identity the
//!   directory and the other POPs see.
//!
//! Every leaf certificate is valid for client and server authentication,
//! with subject alternative names `localhost`, `127.0.0.1` and any extra
//! names given, so that clients can check the host they dialled. The
//! directory's also names [`DIRECTORY_SERVER_NAME`], which POPs check.
//! Existing files are kept: running it again adds what is missing (and
//! reissues a directory certificate made before it carried that name).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tern_proto::tls::{DIRECTORY_NAME, DIRECTORY_SERVER_NAME, POP_NAME_PREFIX, TlsFiles};

/// The file stem of a POP's certificate: `pop-<name>`.
pub fn pop_stem(name: &str) -> String {
    format!("pop-{name}")
}

/// The file stem of the directory's certificate.
pub const DIRECTORY_STEM: &str = "directory";

/// Writes `bytes` to `path` readable by its owner only (keys and tokens).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn rc(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The cluster CA in `dir`, made if missing.
fn ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, String> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert.exists() && key.exists() {
        let key_pem = std::fs::read_to_string(&key)
            .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        let cert_pem = std::fs::read_to_string(&cert)
            .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        let kp = KeyPair::from_pem(&key_pem).map_err(rc("the CA key"))?;
        return Issuer::from_ca_cert_pem(&cert_pem, kp).map_err(rc("the CA certificate"));
    }
    let kp = KeyPair::generate().map_err(rc("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tern cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let c = params.self_signed(&kp).map_err(rc("CA certificate"))?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    write_public(&cert, &c.pem())?;
    Ok(Issuer::new(params, kp))
}

/// Issues (if missing, or if it lacks the DNS name `role`) the
/// certificate `<stem>.pem`/`.key` with common name `cn`.
fn leaf(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    stem: &str,
    cn: &str,
    role: Option<&str>,
    sans: &[String],
) -> Result<TlsFiles, String> {
    let files = TlsFiles::in_dir(dir, stem);
    if files.cert.exists() && files.key.exists() {
        let pem = std::fs::read(&files.cert)
            .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
        let names = tern_proto::tls::dns_names_of_pem(&pem)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        if role.is_none_or(|r| names.iter().any(|n| n == r)) {
            return Ok(files);
        }
        eprintln!(
            "{} does not name {}; issuing it again",
            files.cert.display(),
            role.unwrap_or_default()
        );
    }
    let mut names = vec!["localhost".to_string()];
    names.extend(role.map(str::to_string));
    names.extend(
        sans.iter()
            .filter(|s| s.parse::<IpAddr>().is_err())
            .cloned(),
    );
    let mut params = CertificateParams::new(names).map_err(rc(cn))?;
    for ip in std::iter::once("127.0.0.1".to_string()).chain(sans.iter().cloned()) {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let kp = KeyPair::generate().map_err(rc(cn))?;
    let c = params.signed_by(&kp, issuer).map_err(rc(cn))?;
    write_private(&files.key, kp.serialize_pem().as_bytes())?;
    write_public(&files.cert, &c.pem())?;
    Ok(files)
}

/// What [`generate`] made (or found).
#[derive(Debug, Clone)]
pub struct ClusterCerts {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The directory's files.
    pub directory: TlsFiles,
    /// Each POP's files, by name.
    pub pops: Vec<(String, TlsFiles)>,
}

/// Makes, in `dir`, a CA (unless one is there) and certificates for the
/// directory and each POP in `pops`, valid for localhost, 127.0.0.1 and
/// `sans`.
pub fn generate(dir: &Path, pops: &[String], sans: &[String]) -> Result<ClusterCerts, String> {
    if sans
        .iter()
        .any(|s| s.eq_ignore_ascii_case(DIRECTORY_SERVER_NAME))
    {
        return Err(format!(
            "--san {DIRECTORY_SERVER_NAME} is refused: it is the name POPs check a directory by, and every certificate made here would carry it"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for p in pops {
        if p.is_empty() || p.len() > 64 || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "POP name `{p}` must be 1 to 64 letters, digits or '-'"
            ));
        }
    }
    let issuer = ca(dir)?;
    let directory = leaf(
        dir,
        &issuer,
        DIRECTORY_STEM,
        DIRECTORY_NAME,
        Some(DIRECTORY_SERVER_NAME),
        sans,
    )?;
    let pops = pops
        .iter()
        .map(|p| {
            let cn = format!("{POP_NAME_PREFIX}{p}");
            Ok((
                p.clone(),
                leaf(dir, &issuer, &pop_stem(p), &cn, None, sans)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ClusterCerts {
        ca: dir.join("ca.pem"),
        directory,
        pops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_holder_and_load() {
        let d = tempfile::tempdir().unwrap();
        let c = generate(d.path(), &["fra".into(), "iad".into()], &[]).unwrap();
        for (name, files) in &c.pops {
            let pem = std::fs::read(&files.cert).unwrap();
            assert_eq!(
                tern_proto::tls::common_name_of_pem(&pem).unwrap(),
                format!("pop:{name}")
            );
            tern_proto::tls::Tls::load(files).unwrap();
        }
        let pem = std::fs::read(&c.directory.cert).unwrap();
        assert_eq!(
            tern_proto::tls::common_name_of_pem(&pem).unwrap(),
            "directory"
        );
        assert!(
            tern_proto::tls::dns_names_of_pem(&pem)
                .unwrap()
                .contains(&DIRECTORY_SERVER_NAME.to_string())
        );
        for (_, files) in &c.pops {
            let pem = std::fs::read(&files.cert).unwrap();
            let names = tern_proto::tls::dns_names_of_pem(&pem).unwrap();
            assert!(
                !names.contains(&DIRECTORY_SERVER_NAME.to_string()),
                "a POP cannot pose as a directory"
            );
        }
        // Running it again keeps the CA and adds a POP signed by it.
        let ca_before = std::fs::read(&c.ca).unwrap();
        let again = generate(d.path(), &["nrt".into()], &[]).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca_before);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }

    #[test]
    fn bad_pop_names_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(generate(d.path(), &["a/b".into()], &[]).is_err());
        assert!(generate(d.path(), &[String::new()], &[]).is_err());
    }
}

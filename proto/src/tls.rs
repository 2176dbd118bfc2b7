//! Transport security between tern processes (rustls through tonic).
//!
//! One cluster certificate authority signs every process's certificate.
//! A certificate's subject common name is its holder's identity:
//! `pop:<name>` for a POP ([`POP_NAME_PREFIX`]), `directory` for the
//! directory ([`DIRECTORY_NAME`]). Hostnames are checked against the
//! subject alternative names as usual; the common name is only read after
//! the chain has been verified against the cluster CA, so it cannot be
//! forged without the CA's key.
//!
//! - The directory requires a client certificate (mTLS): only POPs reach it.
//! - A POP checks that a directory it dials holds a directory certificate:
//!   every directory certificate carries the DNS name
//!   [`DIRECTORY_SERVER_NAME`], which POPs verify whatever address they
//!   dialled ([`Tls::directory_client`]); a POP's certificate, signed by
//!   the same CA, does not carry it, so a POP cannot pose as a directory.
//! - A POP serves TLS and accepts, but does not require, a client
//!   certificate: other POPs present theirs (a forwarded call), players
//!   and tools present a bearer token instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Prefix of a POP's certificate common name: `pop:fra`.
pub const POP_NAME_PREFIX: &str = "pop:";

/// Common name of the directory's certificate.
pub const DIRECTORY_NAME: &str = "directory";

/// The DNS name (subject alternative name) of every directory certificate,
/// checked by POPs when they dial a directory.
pub const DIRECTORY_SERVER_NAME: &str = "directory.tern";

/// A TLS handshake that takes longer than this fails, ms (a peer that
/// opens a connection and stalls holds nothing for long).
pub const TLS_HANDSHAKE_MS_MAX: u64 = 5_000;

/// Largest certificate or key file read, bytes.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Where a process's certificate files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This process's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `tern certs` and `tern dev` write for `name` under `dir`:
    /// `ca.pem`, `<name>.pem`, `<name>.key`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// Reads a PEM file, bounded.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{} is {len} bytes; a PEM certificate or key is under {PEM_FILE_BYTES_MAX}",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(format!("{} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// A process's TLS material: the cluster CA and its own identity.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    identity: Identity,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Whether a server requires its clients to present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// mTLS: a client without a certificate signed by the CA cannot
    /// connect (the directory).
    Required,
    /// A certificate is verified if presented (POP to POP); clients
    /// without one authenticate otherwise (bearer tokens).
    Optional,
}

impl Tls {
    /// Loads the files. The certificate and key are checked to parse here,
    /// so a wrong file fails at startup with its path, not at the first
    /// connection.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let ca_pem = read_pem(&files.ca)?;
        let cert = read_pem(&files.cert)?;
        let key = read_pem(&files.key)?;
        common_name_of_pem(&cert).map_err(|e| format!("{}: {e}", files.cert.display()))?;
        Ok(Tls {
            ca_pem,
            identity: Identity::from_pem(cert, key),
        })
    }

    /// This process's certificate and key.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The server side: this identity, verifying client certificates
    /// against the cluster CA.
    pub fn server(&self, clients: ClientCerts) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(clients == ClientCerts::Optional)
            .timeout(Duration::from_millis(TLS_HANDSHAKE_MS_MAX))
    }

    /// The client side: trusts only the cluster CA, presents this identity.
    pub fn client(&self) -> ClientTlsConfig {
        client_trusting(&self.ca_pem).identity(self.identity.clone())
    }

    /// The client side towards a directory: [`Tls::client`], accepting
    /// only a certificate that names [`DIRECTORY_SERVER_NAME`].
    pub fn directory_client(&self) -> ClientTlsConfig {
        self.client().domain_name(DIRECTORY_SERVER_NAME)
    }
}

/// A client that trusts only the CA in `ca_pem` and presents no
/// certificate (players and tools; they authenticate with a token).
pub fn client_trusting(ca_pem: &[u8]) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(Duration::from_millis(TLS_HANDSHAKE_MS_MAX))
}

/// The common name of the first certificate in a PEM file.
pub fn common_name_of_pem(pem: &[u8]) -> Result<String, String> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    common_name_of_der(&p.contents)
}

/// The DNS names among the subject alternative names of the first
/// certificate in a PEM file.
pub fn dns_names_of_pem(pem: &[u8]) -> Result<Vec<String>, String> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&p.contents)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect())
}

/// The subject common name of a DER certificate.
pub fn common_name_of_der(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the certificate has no subject common name")?;
    cn.as_str()
        .map(str::to_string)
        .map_err(|e| format!("the certificate's common name is not text: {e}"))
}

/// The verified identity of a request's peer: the common name of the
/// certificate it presented, which the TLS layer has already verified
/// against the cluster CA. `None` without TLS or without a certificate.
pub fn peer_name<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    common_name_of_der(leaf.as_ref()).ok()
}

/// The POP a request comes from, if its peer presented a verified POP
/// certificate (`pop:<name>`).
pub fn peer_pop<T>(req: &tonic::Request<T>) -> Option<String> {
    peer_name(req)?
        .strip_prefix(POP_NAME_PREFIX)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

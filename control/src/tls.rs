//! TLS material: `gen-certs` (a private CA and the control plane's and a node's certificates,
//! with rcgen) and loading PEM files for the gRPC server.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files `gen-certs` writes, in this order.
pub const CERT_FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "control.pem",
    "control-key.pem",
    "node.pem",
    "node-key.pem",
];

/// Names every generated certificate is valid for, besides the `--hosts` given.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes a fresh CA, a control-plane server certificate and a node certificate (server and
/// client auth, so a data plane can use it both for its HTTPS listener and for mutual TLS) into
/// `out`. Private keys get mode 0600. Returns the paths written.
pub fn gen_certs(out: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    for h in hosts {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let err = |e: rcgen::Error| format!("cannot generate certificates: {e}");

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.distinguished_name = name("Keyplane CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf = |cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(names.clone())
            .map_err(|e| format!("--hosts holds a name that cannot go in a certificate: {e}"))?;
        params.distinguished_name = name(cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok::<_, String>((cert.pem(), key.serialize_pem()))
    };
    let (control_pem, control_key) = leaf(
        "keyplane-control",
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let (node_pem, node_key) = leaf(
        "keyplane-node",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;

    let contents = [
        (CERT_FILES[0], ca_cert.pem(), false),
        (CERT_FILES[1], ca_key.serialize_pem(), true),
        (CERT_FILES[2], control_pem, false),
        (CERT_FILES[3], control_key, true),
        (CERT_FILES[4], node_pem, false),
        (CERT_FILES[5], node_key, true),
    ];
    let mut written = Vec::new();
    for (file, text, private) in contents {
        let path = out.join(file);
        write_file(&path, text.as_bytes(), private)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Keyplane");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// The paths of a complete set of certificates in `dir`, if every file is there.
pub fn existing_certs(dir: &Path) -> Option<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = CERT_FILES.iter().map(|f| dir.join(f)).collect();
    paths.iter().all(|p| p.exists()).then_some(paths)
}

/// `--dev`: generates the certificates into `dir` unless they are all there already; returns
/// the paths, and whether they were generated now.
pub fn dev_certs(dir: &Path) -> Result<(Vec<PathBuf>, bool), String> {
    if let Some(paths) = existing_certs(dir) {
        return Ok((paths, false));
    }
    Ok((gen_certs(dir, &[])?, true))
}

/// Reads a PEM file named by a flag, with the flag in the error.
pub fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(format!("{flag} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_certs_writes_every_file_with_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let written = gen_certs(dir.path(), &["gw.example.com".into(), "10.0.0.7".into()]).unwrap();
        assert_eq!(written.len(), 6);
        for (path, file) in written.iter().zip(CERT_FILES) {
            assert!(path.ends_with(file));
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            let want = if file.ends_with("-key.pem") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode, want, "{file}");
        }
        assert!(read_pem("--tls-cert", &written[2]).is_ok());
        let (again, generated) = dev_certs(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(again, written);
    }
}

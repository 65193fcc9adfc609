//! Certificates for tests of etcd over TLS, made fresh in each test with rcgen: a CA, a
//! server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA
//! (for the "wrong CA" case); and the TLS acceptor of the lab's servers that use them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files written by [`TestCerts::generate`].
#[derive(Clone, Debug)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting it must fail the handshake.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestCerts {
    /// Writes a fresh CA, server and client certificates into `dir`. The client
    /// certificate's common name is `client_cn` (etcd can map it to a user).
    pub fn generate(dir: &Path, client_cn: &str) -> std::io::Result<TestCerts> {
        let err = |e: rcgen::Error| std::io::Error::other(e.to_string());
        let ca = ca("twin test CA").map_err(err)?;
        let other = ca_pem("unrelated CA").map_err(err)?;
        let (server_cert, server_key) = leaf(
            &ca,
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .map_err(err)?;
        let (client_cert, client_key) =
            leaf(&ca, client_cn, vec![], ExtendedKeyUsagePurpose::ClientAuth).map_err(err)?;
        let write = |name: &str, pem: &str| -> std::io::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, pem)?;
            Ok(p)
        };
        Ok(TestCerts {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
            other_ca: write("other-ca.pem", &other)?,
        })
    }
}

fn ca_pem(name: &str) -> Result<String, rcgen::Error> {
    Ok(ca(name)?.pem())
}

impl TestCerts {
    /// An etcd server's flags for client traffic over mutual TLS only, with these files.
    pub fn server_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--cert-file".into(),
            p(&self.server_cert),
            "--key-file".into(),
            p(&self.server_key),
            "--trusted-ca-file".into(),
            p(&self.ca),
            "--client-cert-auth".into(),
        ]
    }

    /// The shared etcd flags of a client with these files: CA, certificate and key.
    pub fn client_etcd_args(&self) -> twin_topology::EtcdArgs {
        twin_topology::EtcdArgs {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
            ..twin_topology::EtcdArgs::default()
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl TestCerts {
    /// A TLS acceptor with the server certificate (valid for 127.0.0.1 and localhost),
    /// offering `alpn` by ALPN (none when empty; a client that offers none of them is refused
    /// with the `no_application_protocol` alert); with `client_ca`, only clients presenting
    /// a certificate signed by it are accepted (mutual TLS).
    pub fn acceptor(
        &self,
        client_ca: Option<&Path>,
        alpn: &[&str],
    ) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server_cert)
            .map_err(io_err)?
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key).map_err(io_err)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io_err)?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(io_err)? {
                    roots.add(c.map_err(io_err)?).map_err(io_err)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(io_err)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(io_err)?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

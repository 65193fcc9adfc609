//! The etcd flags every Twin binary accepts (`twin-sidecar`, `twin-control-plane`, `twinctl`,
//! `twin-chaos`), defined once. The same fields form the `etcd:` section of a YAML config;
//! flags and environment override the file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::argv::{push_opt, push_path};
use crate::connect::EtcdSettings;

/// etcd connection flags. Flatten into a binary's clap arguments with `#[command(flatten)]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (http:// or https://).
    #[arg(long = "etcd", env = "TWIN_ETCD", value_name = "URL[,URL]")]
    pub endpoints: Option<String>,
    /// Key prefix of this Twin installation.
    #[arg(long, env = "TWIN_PREFIX", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long = "etcd-ca", env = "TWIN_ETCD_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "etcd-cert", env = "TWIN_ETCD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long = "etcd-key", env = "TWIN_ETCD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// etcd user name (with auth enabled).
    #[arg(long = "etcd-user", env = "TWIN_ETCD_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// File holding the etcd password (env TWIN_ETCD_PASSWORD also works; never a flag).
    #[arg(long = "etcd-password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// `self` (flags) where given, else `file` (the config file's `etcd:` section).
    pub fn or(self, file: &EtcdArgs) -> EtcdArgs {
        EtcdArgs {
            endpoints: self.endpoints.or_else(|| file.endpoints.clone()),
            prefix: self.prefix.or_else(|| file.prefix.clone()),
            ca: self.ca.or_else(|| file.ca.clone()),
            cert: self.cert.or_else(|| file.cert.clone()),
            key: self.key.or_else(|| file.key.clone()),
            user: self.user.or_else(|| file.user.clone()),
            password_file: self.password_file.or_else(|| file.password_file.clone()),
        }
    }

    /// The flags that parse back to `self`: long forms in declaration order, unset ones left
    /// out (no program name). `--etcd-password-file` is the only way to pass a password.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        push_opt(&mut argv, "--etcd", self.endpoints.as_deref());
        push_opt(&mut argv, "--prefix", self.prefix.as_deref());
        push_path(&mut argv, "--etcd-ca", self.ca.as_deref());
        push_path(&mut argv, "--etcd-cert", self.cert.as_deref());
        push_path(&mut argv, "--etcd-key", self.key.as_deref());
        push_opt(&mut argv, "--etcd-user", self.user.as_deref());
        push_path(
            &mut argv,
            "--etcd-password-file",
            self.password_file.as_deref(),
        );
        argv
    }

    /// Whether any endpoint was given (a sidecar without one runs from a routes file).
    pub fn is_configured(&self) -> bool {
        self.endpoints
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
    }

    /// The settings these flags describe (defaults for what is not given).
    pub fn settings(&self) -> EtcdSettings {
        let defaults = EtcdSettings::default();
        let mut s = EtcdSettings::new(
            self.endpoints
                .as_deref()
                .unwrap_or(&defaults.endpoints.join(",")),
            self.prefix.as_deref().unwrap_or(&defaults.prefix),
        );
        s.ca_file = self.ca.clone();
        s.cert_file = self.cert.clone();
        s.key_file = self.key.clone();
        s.user = self.user.clone();
        s.password_file = self.password_file.clone();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn flags_override_the_file_and_fill_settings() {
        let cli = Cli::try_parse_from([
            "x",
            "--etcd",
            "https://a:1,https://b:2",
            "--etcd-user",
            "op",
        ])
        .expect("flags");
        let file: EtcdArgs =
            serde_yaml::from_str("{endpoints: 'http://f:1', prefix: /pay, ca: /ca.pem}")
                .expect("yaml");
        let merged = cli.etcd.or(&file);
        let s = merged.settings();
        assert_eq!(s.endpoints, vec!["https://a:1", "https://b:2"]);
        assert_eq!(s.prefix, "/pay");
        assert_eq!(s.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.user.as_deref(), Some("op"));
        let err = serde_yaml::from_str::<EtcdArgs>("{password: x}").expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `password`"),
            "{err}"
        );
    }
}

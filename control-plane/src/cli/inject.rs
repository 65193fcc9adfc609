//! `twinctl inject -f FILE|-`: the webhook's mutation applied offline to a YAML stream (like
//! `linkerd inject`). The injected stream goes to stdout, one line per document to stderr.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use crate::cli::Global;
use crate::error::CtlError;
use crate::inject::{inject_stream, InjectConfig};
use crate::output::print_out;

/// Flags of `twinctl inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifests to inject (multi-document YAML); `-` reads stdin
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Injector settings (the webhook's config file: image, datacenter, etcd endpoints...)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Datacenter of the injected sidecars (overrides the config file)
    #[arg(long)]
    pub dc: Option<String>,
    /// Sidecar image (overrides the config file)
    #[arg(long)]
    pub image: Option<String>,
    /// Add the sidecar as a plain container instead of a native sidecar
    #[arg(long)]
    pub container: bool,
}

fn read_input(file: &str) -> Result<String, CtlError> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CtlError::failed(format!("reading stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| CtlError::failed(format!("{file}: {e}")))
}

/// The injector settings: the config file, then flags over it.
fn config(g: &Global, a: &InjectArgs) -> Result<InjectConfig, CtlError> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CtlError::failed(format!("{}: {e}", p.display())))?;
            serde_yaml::from_str(&text)
                .map_err(|e| CtlError::usage(format!("{}: {e}", p.display())))?
        }
        None => InjectConfig::default(),
    };
    if let Some(dc) = &a.dc {
        cfg.datacenter = Some(dc.clone());
    }
    if let Some(image) = &a.image {
        cfg.image = image.clone();
    }
    if let Some(eps) = &g.etcd.endpoints {
        cfg.etcd_endpoints = eps.clone();
    }
    if let Some(prefix) = &g.etcd.prefix {
        cfg.prefix = prefix.clone();
    }
    if a.container {
        cfg.native_sidecar = false;
    }
    cfg.check().map_err(CtlError::usage)?;
    Ok(cfg)
}

/// Runs `twinctl inject`.
pub fn run(g: &Global, a: InjectArgs) -> Result<(), CtlError> {
    let cfg = config(g, &a)?;
    if cfg.etcd_client_secret.is_none() && cfg.etcd_endpoints.contains("https://") {
        eprintln!(
            "warning: no etcd_client_secret: the sidecars get no etcd client certificate, which an etcd with mutual TLS refuses (pass --config with the injector settings, e.g. k8s/overlays/m6v/inject.yaml)"
        );
    }
    let input = read_input(&a.file)?;
    let (out, outcomes) = inject_stream(&input, &cfg).map_err(|e| {
        CtlError::failed(format!(
            "{}: {e}",
            if a.file == "-" { "stdin" } else { &a.file }
        ))
    })?;
    print_out(&out)?;
    for o in outcomes {
        eprintln!("{} {}: {}", o.kind, o.name, o.result);
    }
    Ok(())
}

//! Sidecar injection for Kubernetes: one mutation ([`mutate::decide`]) with two front
//! doors — the admission webhook served by `twin-control-plane` ([`webhook`]) and
//! `twinctl inject` for manifests in CI ([`manifests`]).

pub mod annotations;
pub mod credentials;
pub mod manifests;
pub mod mutate;
pub mod webhook;

pub use manifests::{inject_stream, InjectError, Outcome};
pub use mutate::{decide, patch, Decision, InjectConfig};
pub use webhook::{review, Webhook, WebhookError};

#[cfg(test)]
mod argv_tests;
#[cfg(test)]
mod tests;

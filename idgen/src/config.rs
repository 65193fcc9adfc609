//! [`IdConfig`]: what a generator needs to start. Two constructors pick the worker source
//! ([`IdConfig::etcd`] or [`IdConfig::fixed`]); builder-style setters change the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::IdError;
use crate::layout::Layout;

/// Where the worker id and its high-water mark come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerSource {
    /// Claimed from etcd under a lease (production).
    Etcd,
    /// Fixed in configuration, with the hwm in a local file (pure mode, one process).
    Fixed { worker: u32, hwm_file: PathBuf },
}

/// Configuration of an [`crate::IdService`].
#[derive(Clone, Debug)]
pub struct IdConfig {
    /// Datacenter name (`m6v`, `wanguo`).
    pub dc: String,
    /// Datacenter code: required in pure mode; in etcd mode read from the datacenter record
    /// (if both are given they must agree).
    pub dc_code: Option<u8>,
    /// Stable identity of this node (pod name, host name). A restarted node with the same id
    /// takes back its previous worker id when it is free.
    pub node_id: String,
    pub worker_source: WorkerSource,
    /// Snowflake bit layout.
    pub layout: Layout,
    /// Serial template per business tag (see [`crate::SerialTemplate`]).
    pub serial_templates: BTreeMap<String, String>,
    /// Values per segment allocation (etcd CAS step).
    pub segment_step: u64,
    /// Lease TTL for the worker key.
    pub lease_ttl: Duration,
    /// Stop issuing this long before the lease could expire.
    pub fence_margin: Duration,
    /// How far ahead of the ID clock the hwm is reserved.
    pub reservation_window: Duration,
    /// How far the sequence may run ahead of the ID clock when a tick is used up.
    pub max_lead: Duration,
    /// Longest one `issue` call waits for sequence space before answering `Busy`.
    pub max_wait: Duration,
    /// Timeout of each etcd request.
    pub etcd_timeout: Duration,
    /// How long `start` waits for the first worker claim before returning (the claim keeps
    /// being retried in the background after that); a lazy generator's first request waits
    /// this long for its claim.
    pub start_wait: Duration,
    /// Claim a worker at start and keep it for the life of the generator (true, the library
    /// default), or claim on the first request that needs one and give it back after
    /// `release_idle` without such requests (false, the sidecar's default).
    pub eager: bool,
    /// A lazy generator releases its worker after this long without a Snowflake or serial
    /// request.
    pub release_idle: Duration,
}

/// Builder-style setters that replace one field each: `name: Type` writes
/// `pub fn name(self, value: Type) -> Self`, documented as setting that field.
macro_rules! replace_fields {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets [`IdConfig::", stringify!($field), "`].")]
            pub fn $field(mut self, value: $ty) -> Self {
                self.$field = value;
                self
            }
        )*
    };
}

impl IdConfig {
    fn base(dc: &str, node_id: &str, worker_source: WorkerSource, dc_code: Option<u8>) -> Self {
        IdConfig {
            dc: dc.to_string(),
            dc_code,
            node_id: node_id.to_string(),
            worker_source,
            layout: Layout::default(),
            serial_templates: BTreeMap::new(),
            segment_step: 1000,
            lease_ttl: Duration::from_secs(10),
            fence_margin: Duration::from_secs(2),
            reservation_window: Duration::from_secs(30),
            max_lead: Duration::from_secs(2),
            max_wait: Duration::from_secs(3),
            etcd_timeout: Duration::from_secs(2),
            start_wait: Duration::from_secs(5),
            eager: true,
            release_idle: Duration::from_secs(600),
        }
    }

    /// Pure mode: a fixed worker id, the hwm in `hwm_file` (locked while running).
    pub fn fixed(dc: &str, dc_code: u8, worker: u32, hwm_file: PathBuf) -> IdConfig {
        Self::base(
            dc,
            &format!("fixed-{worker}"),
            WorkerSource::Fixed { worker, hwm_file },
            Some(dc_code),
        )
    }

    /// etcd mode: worker ids claimed under a lease in datacenter `dc` by node `node_id`.
    pub fn etcd(dc: &str, node_id: &str) -> IdConfig {
        Self::base(dc, node_id, WorkerSource::Etcd, None)
    }

    pub fn dc_code(mut self, code: u8) -> Self {
        self.dc_code = Some(code);
        self
    }
    /// Adds (or replaces) the serial template of `biz`.
    pub fn serial_template(mut self, biz: &str, template: &str) -> Self {
        self.serial_templates
            .insert(biz.to_string(), template.to_string());
        self
    }
    replace_fields! {
        layout: Layout,
        serial_templates: BTreeMap<String, String>,
        segment_step: u64,
        lease_ttl: Duration,
        fence_margin: Duration,
        reservation_window: Duration,
        max_lead: Duration,
        max_wait: Duration,
        etcd_timeout: Duration,
        start_wait: Duration,
        eager: bool,
        release_idle: Duration,
    }

    /// Checks the durations and names; each error is one line naming the field.
    pub fn validate(&self) -> Result<(), IdError> {
        let bad = |s: String| Err(IdError::Config(s));
        if self.dc.is_empty() || self.dc.contains('/') {
            return bad(format!(
                "datacenter name {:?} must be non-empty without '/'",
                self.dc
            ));
        }
        if self.node_id.is_empty() {
            return bad("node_id must not be empty".to_string());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad(format!(
                "lease_ttl {:?} must be at least 1s",
                self.lease_ttl
            ));
        }
        if self.fence_margin.is_zero() || self.fence_margin * 2 > self.lease_ttl {
            return bad(format!(
                "fence_margin {:?} must be > 0 and at most half of lease_ttl {:?}",
                self.fence_margin, self.lease_ttl
            ));
        }
        if self.reservation_window < Duration::from_secs(1) {
            return bad(format!(
                "reservation_window {:?} must be at least 1s",
                self.reservation_window
            ));
        }
        if self.max_lead.is_zero() || self.max_lead >= self.reservation_window {
            return bad(format!(
                "max_lead {:?} must be > 0 and below reservation_window {:?}",
                self.max_lead, self.reservation_window
            ));
        }
        if !self.eager && self.release_idle < Duration::from_secs(1) {
            return bad(format!(
                "release_idle {:?} must be at least 1s",
                self.release_idle
            ));
        }
        if self.segment_step == 0 {
            return bad("segment_step must be at least 1".to_string());
        }
        if let Some(code) = self.dc_code {
            if u64::from(code) > self.layout.max_dc_code() {
                return bad(format!(
                    "datacenter code {code} does not fit layout {} (max {})",
                    self.layout,
                    self.layout.max_dc_code()
                ));
            }
        }
        if let WorkerSource::Fixed { worker, .. } = &self.worker_source {
            if *worker >= self.layout.workers() {
                return bad(format!(
                    "worker {worker} does not fit layout {} (max {})",
                    self.layout,
                    self.layout.workers() - 1
                ));
            }
            if self.dc_code.is_none() {
                return bad("pure mode needs a datacenter code".to_string());
            }
        }
        Ok(())
    }
}

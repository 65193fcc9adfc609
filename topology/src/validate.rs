//! The rules every stored value obeys. A value that breaks one is never written by Twin, and a
//! reader that finds one in etcd (written by hand) ignores it. Each error is one line that
//! names what is wrong.

use std::collections::BTreeMap;

use crate::model::{Datacenter, Endpoint, Freeze, Route, MAX_DC_CODE, TOTAL_BASIS_POINTS};

/// A broken rule, as one line a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The sum in basis points; shown in percent (`got 110%`), as SREs write weights.
    #[error("weights must sum to 100%, got {}", percent(*.0))]
    WeightSum(u64),
    #[error("route has no weights: give at least one datacenter a weight")]
    NoWeights,
    #[error("unknown datacenter \"{0}\"")]
    UnknownDatacenter(String),
    #[error("datacenter code {0} out of range 0..={MAX_DC_CODE}")]
    DcCodeRange(u8),
    #[error("datacenter code {code} is used by both \"{a}\" and \"{b}\"")]
    DcCodeTaken { code: u8, a: String, b: String },
    #[error("{what} name \"{name}\" is invalid: use 1-{max} characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit")]
    BadName {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("sticky header \"{0}\" is not a valid HTTP header name")]
    BadHeader(String),
    #[error("{field} must be between {min} and {max} ms, got {got}")]
    TimeoutRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("retry.max_attempts must be between 1 and 5, got {0}")]
    RetryAttempts(u32),
    #[error("retry.budget_percent must be between 0 and 100, got {0}")]
    RetryBudget(u32),
    #[error("min_healthy_percent must be between 0 and 100, got {0}")]
    MinHealthy(u8),
    #[error("tls.server_name {0:?} is not a DNS name or IP address")]
    TlsServerName(String),
    #[error("address \"{0}\" is not host:port")]
    BadAddr(String),
    #[error("capacity must be at least 1, got 0")]
    ZeroCapacity,
    #[error("freeze reason must not be empty")]
    EmptyReason,
    #[error("fence: {0}")]
    Fence(String),
    #[error("serial template: {0}")]
    Template(String),
    #[error("read_only_methods: {0:?} is not an HTTP method (an upper-case token like PROPFIND)")]
    BadMethod(String),
}

/// Basis points as a percentage: 11000 → `110%`, 3333 → `33.33%`.
fn percent(bp: u64) -> String {
    u32::try_from(bp).map_or_else(
        |_| format!("{bp} basis points"),
        crate::model::bp_to_percent,
    )
}

/// Longest datacenter name.
pub const MAX_DC_NAME: usize = 32;
/// Longest service name (a DNS name).
pub const MAX_SERVICE_NAME: usize = 253;

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadName {
            what,
            name: name.to_string(),
            max,
        })
    }
}

/// A datacenter name: lowercase, digits, `-_.`, up to 32 characters.
pub fn datacenter_name(name: &str) -> Result<(), ValidationError> {
    check_name("datacenter", name, MAX_DC_NAME)
}

/// A service name (the Host the application calls).
pub fn service_name(name: &str) -> Result<(), ValidationError> {
    check_name("service", name, MAX_SERVICE_NAME)
}

/// An instance name (a pod or node name).
pub fn instance_name(name: &str) -> Result<(), ValidationError> {
    check_name("instance", name, MAX_SERVICE_NAME)
}

/// An HTTP header name (RFC 9110 token), as used for the sticky key.
pub fn header_name(h: &str) -> Result<(), ValidationError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !h.is_empty() && h.len() <= 128 && h.bytes().all(tchar) {
        Ok(())
    } else {
        Err(ValidationError::BadHeader(h.to_string()))
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
pub fn address(addr: &str) -> Result<(), ValidationError> {
    let bad = || ValidationError::BadAddr(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', ' ']) {
        return Err(bad());
    }
    Ok(())
}

/// A name a TLS certificate can be checked against: a DNS name or an IP address.
pub fn tls_server_name(name: &str) -> Result<(), ValidationError> {
    rustls_pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| ValidationError::TlsServerName(name.to_string()))
}

impl Datacenter {
    /// Name and code rules for one datacenter.
    pub fn validate(&self, name: &str) -> Result<(), ValidationError> {
        datacenter_name(name)?;
        if self.code > MAX_DC_CODE {
            return Err(ValidationError::DcCodeRange(self.code));
        }
        Ok(())
    }
}

/// Every datacenter valid, codes unique.
pub fn datacenters(dcs: &BTreeMap<String, Datacenter>) -> Result<(), ValidationError> {
    let mut by_code: BTreeMap<u8, &str> = BTreeMap::new();
    for (name, dc) in dcs {
        dc.validate(name)?;
        if let Some(other) = by_code.insert(dc.code, name) {
            return Err(ValidationError::DcCodeTaken {
                code: dc.code,
                a: other.to_string(),
                b: name.clone(),
            });
        }
    }
    Ok(())
}

impl Route {
    /// The rules that need no other value: weights sum to 10000, names, header, timeouts,
    /// retry policy, addresses.
    pub fn validate_shape(&self) -> Result<(), ValidationError> {
        if self.weights.0.is_empty() {
            return Err(ValidationError::NoWeights);
        }
        for dc in self.weights.0.keys().chain(self.endpoints.keys()) {
            datacenter_name(dc)?;
        }
        let total = self.weights.total();
        if total != u64::from(TOTAL_BASIS_POINTS) {
            return Err(ValidationError::WeightSum(total));
        }
        header_name(&self.sticky_header)?;
        if self.min_healthy_percent > 100 {
            return Err(ValidationError::MinHealthy(self.min_healthy_percent));
        }
        let t = &self.timeouts;
        for (field, got, max) in [
            ("timeouts.connect_ms", t.connect_ms, 60_000),
            ("timeouts.request_ms", t.request_ms, 600_000),
            ("timeouts.idle_ms", t.idle_ms, 3_600_000),
        ] {
            if got == 0 || got > max {
                return Err(ValidationError::TimeoutRange {
                    field,
                    min: 1,
                    max,
                    got,
                });
            }
        }
        if !(1..=5).contains(&self.retry.max_attempts) {
            return Err(ValidationError::RetryAttempts(self.retry.max_attempts));
        }
        if self.retry.budget_percent > 100 {
            return Err(ValidationError::RetryBudget(self.retry.budget_percent));
        }
        for addr in self.endpoints.values().flatten() {
            address(addr)?;
        }
        if let Some(name) = self.tls.as_ref().and_then(|t| t.server_name.as_ref()) {
            tls_server_name(name)?;
        }
        for m in &self.read_only_methods {
            let token = !m.is_empty()
                && m.len() <= 32
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if !token {
                return Err(ValidationError::BadMethod(m.clone()));
            }
        }
        Ok(())
    }

    /// Shape rules plus: every datacenter it names exists.
    pub fn validate(&self, dcs: &BTreeMap<String, Datacenter>) -> Result<(), ValidationError> {
        self.validate_shape()?;
        for dc in self.weights.0.keys().chain(self.endpoints.keys()) {
            if !dcs.contains_key(dc) {
                return Err(ValidationError::UnknownDatacenter(dc.clone()));
            }
        }
        Ok(())
    }
}

impl Endpoint {
    /// Address and capacity rules.
    pub fn validate(&self) -> Result<(), ValidationError> {
        address(&self.addr)?;
        if self.capacity == 0 {
            return Err(ValidationError::ZeroCapacity);
        }
        Ok(())
    }
}

impl Freeze {
    /// A freeze must say why.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.reason.trim().is_empty() {
            return Err(ValidationError::EmptyReason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OnDcDown, Weights};

    fn dcs() -> BTreeMap<String, Datacenter> {
        [("m6v", 0), ("wanguo", 1)]
            .into_iter()
            .map(|(n, c)| {
                (
                    n.to_string(),
                    Datacenter {
                        code: c,
                        display_name: String::new(),
                    },
                )
            })
            .collect()
    }

    fn route(weights: &[(&str, u32)]) -> Route {
        Route::with_weights(Weights(
            weights.iter().map(|(d, w)| (d.to_string(), *w)).collect(),
        ))
    }

    #[test]
    fn route_rules_each_name_what_is_wrong() {
        let ok = route(&[("m6v", 3000), ("wanguo", 7000)]);
        assert_eq!(ok.validate(&dcs()), Ok(()));

        let mut cases: Vec<(Route, &str)> = vec![
            (
                route(&[("m6v", 2000), ("wanguo", 7000)]),
                "weights must sum to 100%, got 90%",
            ),
            (route(&[]), "route has no weights: give at least one datacenter a weight"),
            (
                route(&[("m7v", 3000), ("wanguo", 7000)]),
                "unknown datacenter \"m7v\"",
            ),
            (
                route(&[("M6V", 10000)]),
                "datacenter name \"M6V\" is invalid: use 1-32 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit",
            ),
        ];
        let mut r = ok.clone();
        r.tls = Some(crate::model::UpstreamTls {
            server_name: Some("bad name!".into()),
        });
        cases.push((
            r,
            "tls.server_name \"bad name!\" is not a DNS name or IP address",
        ));
        let mut r = ok.clone();
        r.sticky_header = "x unit".into();
        cases.push((
            r,
            "sticky header \"x unit\" is not a valid HTTP header name",
        ));
        let mut r = ok.clone();
        r.timeouts.request_ms = 0;
        cases.push((
            r,
            "timeouts.request_ms must be between 1 and 600000 ms, got 0",
        ));
        let mut r = ok.clone();
        r.timeouts.connect_ms = 60_001;
        cases.push((
            r,
            "timeouts.connect_ms must be between 1 and 60000 ms, got 60001",
        ));
        let mut r = ok.clone();
        r.retry.max_attempts = 0;
        cases.push((r, "retry.max_attempts must be between 1 and 5, got 0"));
        let mut r = ok.clone();
        r.retry.budget_percent = 101;
        cases.push((r, "retry.budget_percent must be between 0 and 100, got 101"));
        let mut r = ok.clone();
        r.min_healthy_percent = 150;
        cases.push((r, "min_healthy_percent must be between 0 and 100, got 150"));
        let mut r = ok.clone();
        r.endpoints.insert("m6v".into(), vec!["10.0.0.1".into()]);
        cases.push((r, "address \"10.0.0.1\" is not host:port"));
        let mut r = ok.clone();
        r.endpoints.insert("m6v".into(), vec!["10.0.0.1:0".into()]);
        cases.push((r, "address \"10.0.0.1:0\" is not host:port"));
        let mut r = ok.clone();
        r.endpoints.insert("hk".into(), vec!["10.0.0.1:80".into()]);
        cases.push((r, "unknown datacenter \"hk\""));
        let mut r = ok.clone();
        r.on_dc_down = OnDcDown::Fail;
        assert_eq!(r.validate(&dcs()), Ok(()));

        for (route, want) in cases {
            let err = route.validate(&dcs()).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn datacenter_rules() {
        let mut d = dcs();
        assert_eq!(datacenters(&d), Ok(()));
        d.get_mut("wanguo").expect("wanguo").code = 9;
        assert_eq!(
            datacenters(&d).map_err(|e| e.to_string()),
            Err("datacenter code 9 out of range 0..=7".into())
        );
        d.get_mut("wanguo").expect("wanguo").code = 0;
        assert_eq!(
            datacenters(&d).map_err(|e| e.to_string()),
            Err("datacenter code 0 is used by both \"m6v\" and \"wanguo\"".into())
        );
        for bad in ["", "-x", "a/b", &"x".repeat(33), "Ä"] {
            assert!(datacenter_name(bad).is_err(), "{bad:?}");
        }
        assert!(datacenter_name("hk-2").is_ok());
    }

    #[test]
    fn endpoint_and_freeze_rules() {
        let e = Endpoint {
            addr: "127.0.0.1:80".into(),
            capacity: 0,
            zone: None,
        };
        assert_eq!(e.validate(), Err(ValidationError::ZeroCapacity));
        let e = Endpoint {
            addr: "[::1]:8080".into(),
            capacity: 3,
            zone: None,
        };
        assert_eq!(e.validate(), Ok(()));
        let e = Endpoint {
            addr: "host:99999".into(),
            capacity: 1,
            zone: None,
        };
        assert_eq!(
            e.validate().map_err(|e| e.to_string()),
            Err("address \"host:99999\" is not host:port".into())
        );
        let f = Freeze {
            until_ms: 1,
            reason: " ".into(),
            who: String::new(),
        };
        assert_eq!(f.validate(), Err(ValidationError::EmptyReason));
    }

    #[test]
    fn percent_weights_parse_and_reject_garbage() {
        let w = Weights::parse_percent_list("m6v=30,wanguo=70").expect("valid");
        assert_eq!(w.get("m6v"), 3000);
        assert_eq!(w.to_string(), "m6v=30%,wanguo=70%");
        let w = Weights::parse_percent_list("m6v=33.33%, wanguo=66.67").expect("valid");
        assert_eq!(w.get("wanguo"), 6667);
        for bad in ["m6v", "m6v=x", "m6v=-1", "m6v=1.234", "m6v=1,m6v=2"] {
            assert!(Weights::parse_percent_list(bad).is_err(), "{bad}");
        }
        let yaml: Weights = serde_yaml::from_str("{m6v: 30%, wanguo: 7000}").expect("yaml");
        assert_eq!(yaml.total(), 10000);
        let err = serde_yaml::from_str::<Weights>("{m6v: lots}").expect_err("garbage");
        assert!(
            err.to_string().contains("weight of \"m6v\" is \"lots\""),
            "{err}"
        );
    }

    #[test]
    fn force_dc_defaults_to_deny_and_takes_only_allow_or_deny() {
        let r: Route = serde_yaml::from_str("weights: {m6v: 100%}").expect("yaml");
        assert_eq!(r.force_dc, crate::model::ForceDc::Deny);
        // Routes written before the field existed serialize as they did.
        assert!(!serde_json::to_string(&r)
            .expect("json")
            .contains("force_dc"));
        let r: Route = serde_yaml::from_str("weights: {m6v: 100%}\nforce_dc: allow").expect("yaml");
        assert_eq!(r.force_dc, crate::model::ForceDc::Allow);
        let err = serde_yaml::from_str::<Route>("weights: {m6v: 100%}\nforce_dc: maybe")
            .expect_err("maybe");
        assert!(err.to_string().contains("maybe"), "{err}");
    }
}

//! Serial templates in etcd: `{prefix}/v1/idgen/templates/{biz}` holds a
//! [`TemplateRecord`], and `…/{biz}/used` is written once by the first sidecar that issues a
//! serial with it. The topology only carries them to the sidecars (their syntax belongs to
//! `twin-idgen`); `twinctl id template` writes them.

use serde::{Deserialize, Serialize};

use crate::model::Versioned;
use crate::snapshot::{ApplyError, Topology};
use crate::validate::ValidationError;

/// The value of a template key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRecord {
    /// The serial template, e.g. `PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}`.
    pub template: String,
}

/// The value of a template's `used` marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateUsed {
    /// The node that first issued with the template.
    pub node: String,
    pub at_ms: u64,
}

/// A business tag: 1..=64 of `A-Za-z0-9_-` (the ID API's rule).
pub fn valid_biz(biz: &str) -> bool {
    (1..=64).contains(&biz.len())
        && biz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TemplateRecord {
    pub fn validate(&self, biz: &str) -> Result<(), ValidationError> {
        if !valid_biz(biz) {
            return Err(ValidationError::Template(format!(
                "business tag {biz:?} must be 1..=64 characters of A-Za-z0-9_-"
            )));
        }
        if self.template.is_empty() || self.template.len() > 256 {
            return Err(ValidationError::Template(format!(
                "template of {biz:?} must be 1..=256 characters"
            )));
        }
        Ok(())
    }
}

impl Topology {
    pub(crate) fn apply_template(
        &mut self,
        key: &str,
        biz: &str,
        value: Option<&[u8]>,
        mod_revision: i64,
    ) -> Result<(), ApplyError> {
        let Some(v) = value else {
            self.templates.remove(biz);
            return Ok(());
        };
        let rec: TemplateRecord = serde_json::from_slice(v).map_err(|source| ApplyError::Json {
            key: key.to_string(),
            source,
        })?;
        rec.validate(biz).map_err(|source| ApplyError::Invalid {
            key: key.to_string(),
            source,
        })?;
        self.templates.insert(
            biz.to_string(),
            Versioned {
                value: rec,
                mod_revision,
            },
        );
        Ok(())
    }

    pub(crate) fn apply_template_used(&mut self, biz: &str, value: Option<&[u8]>) {
        match value {
            Some(_) => self.templates_used.insert(biz.to_string()),
            None => self.templates_used.remove(biz),
        };
    }
}

//! [`Codec`]: the layout and serial templates that turn positions into IDs and IDs back into
//! their fields. Decoding needs only the codec, never etcd.

use std::collections::BTreeMap;

use crate::error::{DecodeError, IdError};
use crate::format::Format;
use crate::layout::Layout;
use crate::serial::SerialTemplate;

/// Everything needed to build and read IDs: the Snowflake layout and one serial template
/// per business tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Codec {
    layout: Layout,
    templates: BTreeMap<String, SerialTemplate>,
}

/// What an ID says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub format: Format,
    /// Unix milliseconds of the ID's time field (the start of the second for serials);
    /// `None` for segments, which carry no time.
    pub time: Option<u64>,
    /// Datacenter code (0..=7 with the default layout); `None` for segments.
    pub dc_code: Option<u8>,
    /// Worker id within the datacenter; `None` for segments.
    pub worker: Option<u32>,
    /// Sequence within the time unit (for segments: the value itself).
    pub sequence: u64,
    /// The business tag whose template matched (serials only).
    pub biz: Option<String>,
}

/// A business tag: 1..=64 characters of `A-Za-z0-9_-` (it is part of etcd keys and serials).
pub fn valid_biz(biz: &str) -> bool {
    !biz.is_empty()
        && biz.len() <= 64
        && biz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Codec {
    /// Parses the templates and checks each against the layout: the worker field must hold
    /// every worker id of the layout.
    pub fn new(layout: Layout, templates: &BTreeMap<String, String>) -> Result<Codec, IdError> {
        let need = (layout.workers() - 1).to_string().len();
        let mut parsed = BTreeMap::new();
        for (biz, src) in templates {
            if !valid_biz(biz) {
                return Err(IdError::BadBiz(biz.clone()));
            }
            let t = SerialTemplate::parse(src).map_err(|e| IdError::Config(e.to_string()))?;
            if t.worker_width() < need {
                return Err(IdError::Config(format!(
                    "serial template of {biz:?} has a {}-digit worker field; the layout has {} workers, which need {need}",
                    t.worker_width(),
                    layout.workers()
                )));
            }
            parsed.insert(biz.clone(), t);
        }
        Ok(Codec {
            layout,
            templates: parsed,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The template of `biz`, if one is configured.
    pub fn template(&self, biz: &str) -> Option<&SerialTemplate> {
        self.templates.get(biz)
    }

    /// Business tags with a serial template, in order.
    pub fn serial_bizs(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// Decodes `id` as `format`, or, with `None`, as a serial of any configured template and
    /// otherwise as a Snowflake (a segment value cannot be told apart from a Snowflake).
    pub fn decode(&self, id: &str, format: Option<Format>) -> Result<Decoded, DecodeError> {
        match format {
            Some(Format::Snowflake) => self.decode_snowflake(id),
            Some(Format::Segment) => {
                let v = parse_u63(id)?;
                Ok(Decoded {
                    format: Format::Segment,
                    time: None,
                    dc_code: None,
                    worker: None,
                    sequence: v,
                    biz: None,
                })
            }
            Some(Format::Serial) => self
                .decode_serial(id)
                .unwrap_or_else(|| Err(DecodeError::NoTemplate(id.to_string()))),
            None => match self.decode_serial(id) {
                Some(r) => r,
                None => self.decode_snowflake(id),
            },
        }
    }

    fn decode_snowflake(&self, id: &str) -> Result<Decoded, DecodeError> {
        let v = parse_u63(id)?;
        let p = self.layout.decode(v).ok_or_else(|| DecodeError::Invalid {
            id: id.to_string(),
            what: format!("time field exceeds layout {}", self.layout),
        })?;
        Ok(Decoded {
            format: Format::Snowflake,
            time: Some(p.time_ms),
            dc_code: Some(p.dc_code),
            worker: Some(p.worker),
            sequence: p.sequence,
            biz: None,
        })
    }

    /// `None` when no template has the ID's length and literals; otherwise the first
    /// template's verdict (a check-digit failure is reported, not skipped).
    fn decode_serial(&self, id: &str) -> Option<Result<Decoded, DecodeError>> {
        let mut first_err = None;
        for (biz, t) in &self.templates {
            match t.decode(biz, id) {
                Ok(p) => {
                    return Some(Ok(Decoded {
                        format: Format::Serial,
                        time: Some(p.second * 1000),
                        dc_code: Some(p.dc_code),
                        worker: Some(p.worker),
                        sequence: p.sequence,
                        biz: Some(biz.clone()),
                    }))
                }
                Err(DecodeError::TemplateMismatch { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map(Err)
    }
}

fn parse_u63(id: &str) -> Result<u64, DecodeError> {
    let nan = || DecodeError::NotANumber(id.to_string());
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(nan());
    }
    let v: u64 = id.parse().map_err(|_| nan())?;
    if v >> 63 != 0 {
        return Err(nan());
    }
    Ok(v)
}

/// Decodes `id` with `codec` (see [`Codec::decode`]); works without etcd.
pub fn decode(id: &str, format: Option<Format>, codec: &Codec) -> Result<Decoded, DecodeError> {
    codec.decode(id, format)
}

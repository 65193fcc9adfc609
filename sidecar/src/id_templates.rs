//! Which serial templates a sidecar issues with, and the record of their first use.
//!
//! Templates live in etcd (`{prefix}/v1/idgen/templates/{biz}`, set with `twinctl id
//! template set`) and reach the sidecar through its topology view (and its snapshot). The
//! config file may pin templates too (`idgen.serial_templates`, for etcd-less use). A pinned
//! template that differs from etcd's for the same tag is refused: serials of that tag are
//! answered 503 with the reason, so two sidecars with different templates for one tag never
//! both issue. With etcd, before the first serial of a tag this sidecar writes the tag's
//! `used` marker in a transaction that requires the template to be the one it issues with
//! (a pinned template etcd lacks is written there in the same transaction); from then on
//! `twinctl` refuses to change it.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use twin_idgen::{Codec, Layout};
use twin_topology::{now_ms, Keys, TemplateRecord, TemplateUsed, Topology};

/// The templates to issue with, where they came from, and the tags refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub templates: BTreeMap<String, String>,
    /// The etcd `mod_revision` of each template read from etcd.
    pub from_etcd: BTreeMap<String, i64>,
    /// Tags whose serials are refused, with the one-line reason.
    pub refused: BTreeMap<String, String>,
}

fn invalid(layout: Layout, biz: &str, template: &str) -> Option<String> {
    let one = BTreeMap::from([(biz.to_string(), template.to_string())]);
    Codec::new(layout, &one).err().map(|e| e.to_string())
}

/// Merges etcd's templates (from `topo`) with the config's `pinned` ones.
pub fn effective(pinned: &BTreeMap<String, String>, topo: &Topology, layout: Layout) -> Effective {
    let mut out = Effective::default();
    for (biz, rec) in &topo.templates {
        let t = &rec.value.template;
        if let Some(why) = invalid(layout, biz, t) {
            out.refused.insert(
                biz.clone(),
                format!("serial template of {biz} in etcd is not usable: {why}"),
            );
            continue;
        }
        out.templates.insert(biz.clone(), t.clone());
        out.from_etcd.insert(biz.clone(), rec.mod_revision);
    }
    for (biz, t) in pinned {
        match out.templates.get(biz) {
            Some(e) if e == t => {}
            Some(e) => {
                out.refused.insert(
                    biz.clone(),
                    format!(
                        "serial template of {biz} pinned in this sidecar's config ({t:?}) \
                         differs from etcd's ({e:?}): remove it from idgen.serial_templates or \
                         make it equal; serials of {biz} are refused until then"
                    ),
                );
                out.templates.remove(biz);
                out.from_etcd.remove(biz);
            }
            None if out.refused.contains_key(biz) => {}
            None => match invalid(layout, biz, t) {
                Some(why) => {
                    out.refused
                        .insert(biz.clone(), format!("idgen.serial_templates.{biz}: {why}"));
                }
                None => {
                    out.templates.insert(biz.clone(), t.clone());
                }
            },
        }
    }
    out
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string(v).map_err(|e| e.to_string())
}

/// Writes the `used` marker of `biz` (and the template itself when etcd has none), only while
/// etcd's template is still `template` at `etcd_rev`. Succeeds when another sidecar already
/// marked the same template.
pub async fn record_first_use(
    client: &etcd_client::Client,
    keys: &Keys,
    node: &str,
    biz: &str,
    template: &str,
    etcd_rev: Option<i64>,
) -> Result<(), String> {
    let tkey = keys.idgen_template(biz);
    let ukey = keys.idgen_template_used(biz);
    let used = json(&TemplateUsed {
        node: node.to_string(),
        at_ms: now_ms(),
    })?;
    let mut then = vec![TxnOp::put(ukey.clone(), used, None)];
    if etcd_rev.is_none() {
        let rec = TemplateRecord {
            template: template.to_string(),
        };
        then.push(TxnOp::put(tkey.clone(), json(&rec)?, None));
    }
    let txn = Txn::new()
        .when([
            Compare::mod_revision(tkey.clone(), CompareOp::Equal, etcd_rev.unwrap_or(0)),
            Compare::create_revision(ukey.clone(), CompareOp::Equal, 0),
        ])
        .and_then(then)
        .or_else([TxnOp::get(tkey, None), TxnOp::get(ukey, None)]);
    let resp = client.kv_client().txn(txn).await.map_err(|e| {
        format!("cannot record the first use of serial template {biz} in etcd: {e}")
    })?;
    if resp.succeeded() {
        return Ok(());
    }
    let mut found = (None, false);
    for (i, op) in resp.op_responses().into_iter().enumerate() {
        if let TxnOpResponse::Get(g) = op {
            match (i, g.kvs().first()) {
                (0, Some(kv)) => {
                    found.0 = serde_json::from_slice::<TemplateRecord>(kv.value())
                        .ok()
                        .map(|r| r.template)
                }
                (1, Some(_)) => found.1 = true,
                _ => {}
            }
        }
    }
    match found {
        (Some(t), true) if t == template => Ok(()),
        (Some(t), _) if t != template => Err(format!(
            "serial template of {biz} in etcd is now {t:?}, not {template:?}: serials of {biz} \
             wait until this sidecar follows etcd"
        )),
        _ => Err(format!(
            "serial template of {biz} changed in etcd while its first use was recorded; retry"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::Versioned;

    const PAY: &str = "PAY{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";
    const PAY2: &str = "P2{yyyyMMddHHmmss}{dc:1}{worker:4}{seq:5}{check}";

    fn topo(templates: &[(&str, &str)]) -> Topology {
        let mut t = Topology::default();
        for (biz, tpl) in templates {
            t.templates.insert(
                biz.to_string(),
                Versioned {
                    value: TemplateRecord {
                        template: tpl.to_string(),
                    },
                    mod_revision: 7,
                },
            );
        }
        t
    }

    #[test]
    fn pinned_templates_must_equal_etcd_and_bad_ones_are_refused_alone() {
        let pinned = BTreeMap::from([
            ("pay".to_string(), PAY.to_string()),
            ("own".to_string(), PAY2.to_string()),
            ("bad".to_string(), "{seq:5}".to_string()),
        ]);
        let e = effective(
            &pinned,
            &topo(&[("pay", PAY), ("ord", PAY2)]),
            Layout::default(),
        );
        assert_eq!(
            e.templates.keys().collect::<Vec<_>>(),
            ["ord", "own", "pay"]
        );
        assert_eq!(e.from_etcd.get("pay"), Some(&7));
        assert_eq!(e.from_etcd.get("own"), None, "pinned only");
        assert!(e.refused["bad"].starts_with("idgen.serial_templates.bad:"));

        let e = effective(&pinned, &topo(&[("pay", PAY2)]), Layout::default());
        assert!(!e.templates.contains_key("pay"));
        let why = &e.refused["pay"];
        assert!(
            why.contains("pinned in this sidecar's config") && why.contains("differs from etcd's"),
            "{why}"
        );
    }
}

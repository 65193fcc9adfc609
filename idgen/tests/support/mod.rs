//! What the etcd-mode tests share: a real etcd that knows the datacenters the generators
//! run in.

use twin_lab::Etcd;
use twin_topology::{AuditMeta, Datacenter, Keys, Store};

/// The datacenters of the tests and their codes (1 and 2, so code 0 is never assumed).
pub const DCS: [(&str, u8); 2] = [("m6v", 1), ("wanguo", 2)];

/// Starts etcd and writes [`DCS`] under the default keys, as an audited setup.
pub async fn etcd_with_dcs() -> (Etcd, Keys) {
    let etcd = Etcd::start().await.expect("etcd");
    let keys = Keys::default();
    let store = Store::new(etcd.client().await.expect("client"), keys.clone());
    let audit = AuditMeta {
        who: "test".to_string(),
        action: "setup".to_string(),
        reason: "test".to_string(),
    };
    for (name, code) in DCS {
        let dc = Datacenter {
            code,
            display_name: String::new(),
        };
        store
            .put_datacenter(name, &dc, 0, &audit)
            .await
            .expect("datacenter");
    }
    (etcd, keys)
}

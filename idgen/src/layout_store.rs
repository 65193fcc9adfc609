//! The Snowflake layout of a datacenter, stored at `{prefix}/v1/idgen/layouts/{dc}` by its
//! first generator: the bits of an ID mean what that layout says for the life of the data,
//! so a generator configured with another layout for the datacenter is refused.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::error::IdError;
use crate::lease::{within, EtcdWorkers};

impl EtcdWorkers {
    /// Stores `layout` as this datacenter's layout when none is stored yet, and refuses a
    /// layout that differs from the stored one: the same bits would be read differently.
    pub async fn check_layout(&self, layout: &crate::Layout) -> Result<(), IdError> {
        let key = self.keys.idgen_layout(&self.dc);
        let mine = layout.to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), mine.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = within(self.timeout, self.client.kv_client().txn(txn))
            .await
            .map_err(IdError::from)?;
        if resp.succeeded() {
            return Ok(());
        }
        let stored = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        if stored == mine {
            return Ok(());
        }
        Err(IdError::Config(format!(
            "datacenter {} already issues with Snowflake layout {stored} ({key}); the configured \
             layout {mine} is refused: worker_bits and sequence_bits are for new installations",
            self.dc
        )))
    }
}

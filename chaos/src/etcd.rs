//! The drill's etcd: the lab's [`Etcd`] (members it can kill, pause and restart on their
//! data directories, optionally secured) and what steps need on top: which members a
//! selector (`leader`, `minority`, ...) names at the moment a step runs.

use std::ops::Deref;

use twin_lab::Etcd;

use crate::target::EtcdSelector;

/// The members of the drill's etcd.
pub struct EtcdCluster(pub Etcd);

impl Deref for EtcdCluster {
    type Target = Etcd;
    fn deref(&self) -> &Etcd {
        &self.0
    }
}

impl EtcdCluster {
    /// The members a selector names now (the leader is looked up).
    pub async fn resolve(&self, sel: EtcdSelector) -> Vec<usize> {
        let n = self.members.len();
        let leader = self.leader().await;
        let others = || (0..n).filter(move |i| Some(*i) != leader);
        match sel {
            EtcdSelector::Member(i) => vec![i],
            EtcdSelector::All => (0..n).collect(),
            EtcdSelector::Leader => leader.into_iter().collect(),
            EtcdSelector::Minority => others().take((n - 1) / 2).collect(),
            EtcdSelector::Majority => leader.into_iter().chain(others()).take(n / 2 + 1).collect(),
        }
    }
}

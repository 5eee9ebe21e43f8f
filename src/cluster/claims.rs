//! Address claims: before Docker is asked for a container with an address, the address is
//! claimed in etcd at `<key_prefix>/addresses/<node>/<docker network>/<ip>`, created only
//! if absent. A create claims every address in ONE transaction together with the VM's
//! record, both on the creating process's lease; a dynamic address is the first free one
//! of a list of candidates, chosen inside that transaction by nested transactions (each
//! level claims its candidate if it is free, else goes on to the next), so concurrent
//! creates get distinct addresses without a retry. When the container runs, the record and
//! its claims are made permanent in one more transaction; `delete_vm` (and `has_vm`'s
//! repair) remove the record and its claims together. A killed create's claims expire with
//! its lease.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde::{Deserialize, Serialize};

use super::error::IndexError;
use super::etcd::Etcd;
use super::index::encode;
use super::model::{AddressClaim, VmRecord};
use super::view::Keys;
use crate::ids::VmCid;

/// The value of a claim key: the VM holding the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClaimValue {
    pub(crate) vm: VmCid,
}

/// One address a new VM needs on one Docker network of its node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Wanted {
    /// A static IP: exactly this one.
    Fixed { network: String, ip: Ipv4Addr },
    /// A dynamic IP: the first of `candidates` still free when the transaction runs.
    AnyOf {
        network: String,
        candidates: Vec<Ipv4Addr>,
    },
}

/// What the claim transaction achieved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Claimed {
    /// The record is written and every address claimed, in the order of the request.
    All(Vec<AddressClaim>),
    /// A static IP is claimed by another VM (`on_lease`: by a create still running);
    /// nothing was written.
    Taken {
        network: String,
        ip: Ipv4Addr,
        holder: String,
        on_lease: bool,
    },
    /// Every candidate of a dynamic network is claimed. The record and the other claims
    /// were written (on the lease) and must be undone by the caller.
    Exhausted { network: String },
}

fn value_of(vm: &VmCid) -> Result<String, IndexError> {
    encode(&ClaimValue { vm: vm.clone() }, || "an address claim".into())
}

fn record_text(record: &VmRecord) -> Result<String, IndexError> {
    encode(record, || format!("the index record of {}", record.cid))
}

/// The nested transaction that claims the first free key of `keys` (`None` when `keys`
/// is empty).
fn first_free(keys: &[String], value: &str, lease: i64) -> Option<Txn> {
    let (first, rest) = keys.split_first()?;
    let claim = Txn::new()
        .when(vec![Compare::create_revision(
            first.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(
            first.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Some(match first_free(rest, value, lease) {
        Some(next) => claim.or_else(vec![TxnOp::txn(next)]),
        None => claim,
    })
}

/// Which level of a [`first_free`] chain claimed its key (its index), if any.
fn claimed_level(mut response: TxnResponse) -> Option<usize> {
    let mut level = 0;
    loop {
        if response.succeeded() {
            return Some(level);
        }
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Txn(next)) => {
                response = next;
                level += 1;
            }
            _ => return None,
        }
    }
}

/// Writes `record` (state `creating`) and claims every `wanted` address on `node`, all on
/// `lease`, in one transaction.
pub(crate) async fn claim_for_new_vm(
    etcd: &Etcd,
    keys: &Keys,
    lease: i64,
    record: &VmRecord,
    wanted: &[Wanted],
) -> Result<Claimed, IndexError> {
    let (txn, has_chain) = claim_txn(keys, lease, record, wanted)?;
    let response = etcd
        .client()
        .txn(txn)
        .await
        .map_err(|e| etcd.error(&format!("claiming the addresses of VM {}", record.cid), &e))?;
    if !response.succeeded() {
        return Ok(taken(response, wanted));
    }
    // After the record and the fixed claims come the chains, in the order of `wanted`.
    let levels = response
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Txn(t) => Some(t),
            _ => None,
        })
        .map(claimed_level);
    Ok(read_claims(wanted, &has_chain, levels))
}

/// The transaction of [`claim_for_new_vm`]: when no static IP is claimed, write the record
/// and every static claim and run one [`first_free`] chain per dynamic network; otherwise
/// read the static claims. With it, whether each `wanted` dynamic network has a chain
/// (it has none without candidates).
fn claim_txn(
    keys: &Keys,
    lease: i64,
    record: &VmRecord,
    wanted: &[Wanted],
) -> Result<(Txn, Vec<bool>), IndexError> {
    let node = &record.node;
    let value = value_of(&record.cid)?;
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    let mut compares = Vec::new();
    let mut fixed_gets = Vec::new();
    let mut then = vec![TxnOp::put(
        keys.vm(&record.cid),
        record_text(record)?,
        on_lease(),
    )];
    let mut has_chain = Vec::new();
    for w in wanted {
        match w {
            Wanted::Fixed { network, ip } => {
                let key = keys.address(node, network, *ip);
                compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                fixed_gets.push(TxnOp::get(key.as_str(), None));
                then.push(TxnOp::put(key, value.as_str(), on_lease()));
            }
            Wanted::AnyOf {
                network,
                candidates,
            } => {
                let ks: Vec<String> = candidates
                    .iter()
                    .map(|ip| keys.address(node, network, *ip))
                    .collect();
                if let Some(chain) = first_free(&ks, &value, lease) {
                    then.push(TxnOp::txn(chain));
                }
                has_chain.push(!ks.is_empty());
            }
        }
    }
    let txn = Txn::new().when(compares).and_then(then).or_else(fixed_gets);
    Ok((txn, has_chain))
}

/// What a successful claim transaction achieved: every static IP, and for each dynamic
/// network the candidate its chain claimed (`levels`: the level of each chain, in order);
/// the first dynamic network with none claimed is exhausted.
fn read_claims(
    wanted: &[Wanted],
    has_chain: &[bool],
    mut levels: impl Iterator<Item = Option<usize>>,
) -> Claimed {
    let mut dynamic = has_chain.iter();
    let mut claims = Vec::new();
    for w in wanted {
        match w {
            Wanted::Fixed { network, ip } => claims.push(AddressClaim {
                network: network.clone(),
                ip: *ip,
            }),
            Wanted::AnyOf {
                network,
                candidates,
            } => {
                let level = if dynamic.next().copied().unwrap_or(false) {
                    levels.next().flatten()
                } else {
                    None
                };
                match level.and_then(|l| candidates.get(l)) {
                    Some(ip) => claims.push(AddressClaim {
                        network: network.clone(),
                        ip: *ip,
                    }),
                    None => {
                        return Claimed::Exhausted {
                            network: network.clone(),
                        };
                    }
                }
            }
        }
    }
    Claimed::All(claims)
}

/// The static IP that made the claim fail, and its holder.
fn taken(response: TxnResponse, wanted: &[Wanted]) -> Claimed {
    let fixed: Vec<(&String, Ipv4Addr)> = wanted
        .iter()
        .filter_map(|w| match w {
            Wanted::Fixed { network, ip } => Some((network, *ip)),
            Wanted::AnyOf { .. } => None,
        })
        .collect();
    for ((network, ip), r) in fixed.iter().zip(response.op_responses()) {
        let TxnOpResponse::Get(get) = r else { continue };
        if let Some(kv) = get.kvs().first() {
            let holder = serde_json::from_slice::<ClaimValue>(kv.value())
                .map(|v| v.vm.to_string())
                .unwrap_or_else(|_| "an unreadable claim".to_string());
            return Claimed::Taken {
                network: (*network).clone(),
                ip: *ip,
                holder,
                on_lease: kv.lease() != 0,
            };
        }
    }
    // The compares and these reads are one transaction, so a failed compare's key is
    // read; this is only reached if etcd answered otherwise.
    let (network, ip) = fixed
        .first()
        .map(|(n, ip)| ((*n).clone(), *ip))
        .unwrap_or((String::new(), Ipv4Addr::UNSPECIFIED));
    Claimed::Taken {
        network,
        ip,
        holder: "another VM".to_string(),
        on_lease: true,
    }
}

/// Makes the record (now `created`, listing its claims) and its claims permanent, in one
/// transaction that succeeds only while they are still on `lease`: a create whose lease
/// expired (the process stalled) may have lost its addresses to another VM. `Ok(false)`
/// then.
pub(crate) async fn make_permanent(
    etcd: &Etcd,
    keys: &Keys,
    lease: i64,
    record: &VmRecord,
) -> Result<bool, IndexError> {
    let record_key = keys.vm(&record.cid);
    let value = value_of(&record.cid)?;
    let mut compares = vec![Compare::lease(record_key.as_str(), CompareOp::Equal, lease)];
    let mut then = vec![TxnOp::put(record_key.as_str(), record_text(record)?, None)];
    for c in &record.addresses {
        let key = keys.address(&record.node, &c.network, c.ip);
        compares.push(Compare::lease(key.as_str(), CompareOp::Equal, lease));
        then.push(TxnOp::put(key, value.as_str(), None));
    }
    let response = etcd
        .client()
        .txn(Txn::new().when(compares).and_then(then))
        .await
        .map_err(|e| etcd.error(&format!("recording VM {}", record.cid), &e))?;
    Ok(response.succeeded())
}

/// Removes a VM's record and the address claims it lists, in one transaction; a claim is
/// removed only while it still names this VM.
pub(crate) async fn forget_vm(
    etcd: &Etcd,
    keys: &Keys,
    record: &VmRecord,
) -> Result<(), IndexError> {
    let value = value_of(&record.cid)?;
    let mut ops = vec![TxnOp::delete(keys.vm(&record.cid), None)];
    for c in &record.addresses {
        let key = keys.address(&record.node, &c.network, c.ip);
        ops.push(TxnOp::txn(
            Txn::new()
                .when(vec![Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    value.as_str(),
                )])
                .and_then(vec![TxnOp::delete(key.as_str(), None)]),
        ));
    }
    etcd.client()
        .repeatable_txn(Txn::new().and_then(ops))
        .await
        .map_err(|e| etcd.error(&format!("removing the record of VM {}", record.cid), &e))?;
    Ok(())
}

/// Removes every claim naming `vm` (a VM without a record: nothing else would ever free
/// them): one prefix read, one transaction removing each only while it still names `vm`.
pub(crate) async fn forget_claims_of(
    etcd: &Etcd,
    keys: &Keys,
    vm: &VmCid,
) -> Result<(), IndexError> {
    let value = value_of(vm)?;
    let found = super::index::under(etcd, &keys.addresses(), "reading the address claims").await?;
    let ops: Vec<TxnOp> = found
        .iter()
        .filter(|kv| kv.value() == value.as_bytes())
        .map(|kv| {
            TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::value(
                        kv.key(),
                        CompareOp::Equal,
                        value.as_str(),
                    )])
                    .and_then(vec![TxnOp::delete(kv.key(), None)]),
            )
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    tracing::warn!(vm = %vm, claims = ops.len(), "removing address claims of a VM without record");
    etcd.client()
        .repeatable_txn(Txn::new().and_then(ops))
        .await
        .map_err(|e| etcd.error(&format!("removing the address claims of {vm}"), &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn claim(network: &str, last: u8) -> AddressClaim {
        AddressClaim {
            network: network.into(),
            ip: ip(last),
        }
    }

    fn wanted() -> Vec<Wanted> {
        vec![
            Wanted::Fixed {
                network: "static".into(),
                ip: ip(5),
            },
            Wanted::AnyOf {
                network: "dyn".into(),
                candidates: vec![ip(10), ip(11), ip(12)],
            },
        ]
    }

    #[test]
    fn a_chain_claims_the_candidate_of_its_level() {
        let claimed = read_claims(&wanted(), &[true], [Some(1)].into_iter());
        assert_eq!(
            claimed,
            Claimed::All(vec![claim("static", 5), claim("dyn", 11)])
        );
    }

    #[test]
    fn a_chain_that_claimed_nothing_or_no_candidates_is_exhausted() {
        let exhausted = Claimed::Exhausted {
            network: "dyn".into(),
        };
        assert_eq!(
            read_claims(&wanted(), &[true], [None].into_iter()),
            exhausted
        );
        let none = vec![Wanted::AnyOf {
            network: "dyn".into(),
            candidates: Vec::new(),
        }];
        assert_eq!(
            read_claims(&none, &[false], [Some(0)].into_iter()),
            exhausted
        );
    }
}

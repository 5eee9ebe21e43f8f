//! How one node's subnet is split for BOSH: a reserved head (the gateway and room for
//! hand-placed VMs such as the director), a static block, the addresses the director
//! assigns itself, and the CPI's dynamic pool at the top, which BOSH must never hand out.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::cloud::vm::network_plan::dynamic_pool;

/// An inclusive address range, written the BOSH way (`10.1.1.1-10.1.1.20`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrRange {
    pub(crate) first: Ipv4Addr,
    pub(crate) last: Ipv4Addr,
}

impl AddrRange {
    /// Whether `ip` lies in the range.
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// How many addresses go where, at the bottom of every subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    /// Addresses reserved from the first host address on (the original: 20, `.1`-`.20`).
    pub(crate) reserved: u32,
    /// Addresses for static IPs, right after the reserved ones.
    pub(crate) static_ips: u32,
}

/// The split of one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubnetPlan {
    /// Ranges BOSH must not assign: the reserved head, the gateway, the CPI's dynamic pool.
    pub(crate) reserved: Vec<AddrRange>,
    /// The static block, if any.
    pub(crate) static_range: Option<AddrRange>,
    /// What is left for the director to assign on its own, if anything.
    pub(crate) automatic: Option<AddrRange>,
}

fn range(first: u32, last: u32) -> Option<AddrRange> {
    (first <= last).then(|| AddrRange {
        first: Ipv4Addr::from(first),
        last: Ipv4Addr::from(last),
    })
}

/// Splits `subnet` (gateway `gateway`) as `split` asks. Fails when the gateway is outside
/// the subnet or when no address is left for BOSH to give to a VM.
pub(crate) fn plan(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    split: Split,
) -> Result<SubnetPlan, PlanError> {
    if !subnet.contains(&gateway) {
        return Err(PlanError::GatewayOutside { gateway, subnet });
    }
    let first_host = u32::from(subnet.network()).saturating_add(1);
    let last_host = u32::from(subnet.broadcast()).saturating_sub(1);
    let pool_range = pool_of(subnet);
    // Everything BOSH may use ends right below the CPI's pool.
    let below_pool = pool_range
        .map(|p| u32::from(p.first).saturating_sub(1))
        .unwrap_or(last_host);
    let head = head_of(first_host, gateway, split.reserved, below_pool);
    let after_head = head.map(|h| u32::from(h.last) + 1).unwrap_or(first_host);
    let static_range = block_of(after_head, split.static_ips, below_pool);
    if let Some(block) = static_range
        && block.contains(gateway)
    {
        return Err(PlanError::GatewayInStaticBlock {
            block,
            subnet,
            gateway,
        });
    }
    let after_static = static_range
        .map(|s| u32::from(s.last) + 1)
        .unwrap_or(after_head);
    let automatic = range(after_static, below_pool);
    if !usable(static_range, gateway) && !usable(automatic, gateway) {
        return Err(PlanError::NoAddressLeft {
            subnet,
            reserved: split.reserved,
            pool: pool_range.map(|p| format!(" {p}")).unwrap_or_default(),
        });
    }
    Ok(SubnetPlan {
        reserved: reserved_of(head, gateway, pool_range),
        static_range,
        automatic,
    })
}

/// The CPI's dynamic pool of `subnet`, as one range (none when the subnet has no room).
fn pool_of(subnet: Ipv4Net) -> Option<AddrRange> {
    let mut p = dynamic_pool(subnet);
    let first = p.next()?;
    let last = p.last().unwrap_or(first);
    range(u32::from(first), u32::from(last))
}

/// The reserved head: `count` addresses from the first host address on, never into the
/// pool (`below_pool`: its last address). A gateway at the first host address is always
/// part of it.
fn head_of(first_host: u32, gateway: Ipv4Addr, count: u32, below_pool: u32) -> Option<AddrRange> {
    let count = if u32::from(gateway) == first_host {
        count.max(1)
    } else {
        count
    };
    let end = first_host
        .saturating_add(count)
        .saturating_sub(1)
        .min(below_pool);
    (count > 0).then(|| range(first_host, end)).flatten()
}

/// The static block: `count` addresses from `start` on, never into the pool.
fn block_of(start: u32, count: u32, below_pool: u32) -> Option<AddrRange> {
    let end = start
        .saturating_add(count)
        .saturating_sub(1)
        .min(below_pool);
    (count > 0).then(|| range(start, end)).flatten()
}

/// Whether `r` holds an address BOSH can give a VM (any but the gateway).
fn usable(r: Option<AddrRange>, gateway: Ipv4Addr) -> bool {
    r.iter()
        .flat_map(|r| u32::from(r.first)..=u32::from(r.last))
        .any(|ip| Ipv4Addr::from(ip) != gateway)
}

/// What BOSH must not assign, sorted: the head, the gateway (unless the head or the pool
/// holds it) and the pool.
fn reserved_of(
    head: Option<AddrRange>,
    gateway: Ipv4Addr,
    pool: Option<AddrRange>,
) -> Vec<AddrRange> {
    let mut reserved: Vec<AddrRange> = head.into_iter().collect();
    let gateway_covered = reserved.iter().chain(&pool).any(|r| r.contains(gateway));
    if !gateway_covered {
        reserved.push(AddrRange {
            first: gateway,
            last: gateway,
        });
    }
    reserved.extend(pool);
    reserved.sort();
    reserved
}

/// Why a node's subnet cannot be split for BOSH.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The node's gateway lies outside its subnet.
    #[error("gateway {gateway} is not in subnet {subnet}")]
    GatewayOutside { gateway: Ipv4Addr, subnet: Ipv4Net },
    /// The static block asked for would cover the gateway.
    #[error(
        "the static block {block} of {subnet} would hold the gateway {gateway}: reserve more addresses at the start"
    )]
    GatewayInStaticBlock {
        block: AddrRange,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    },
    /// The reservations and the CPI's pool leave BOSH no address (`pool`: ` <range>` or
    /// empty).
    #[error(
        "subnet {subnet} leaves no address for BOSH: {reserved} reserved at the start and the CPI's dynamic pool{pool} take it all"
    )]
    NoAddressLeft {
        subnet: Ipv4Net,
        reserved: u32,
        pool: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn strings(rs: &[AddrRange]) -> Vec<String> {
        rs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_slash_24_as_the_original_split_it() {
        let p = plan(
            net("10.1.1.0/24"),
            ip("10.1.1.1"),
            Split {
                reserved: 20,
                static_ips: 40,
            },
        )
        .unwrap();
        assert_eq!(
            strings(&p.reserved),
            ["10.1.1.1-10.1.1.20", "10.1.1.192-10.1.1.254"]
        );
        assert_eq!(p.static_range.unwrap().to_string(), "10.1.1.21-10.1.1.60");
        assert_eq!(p.automatic.unwrap().to_string(), "10.1.1.61-10.1.1.191");
    }

    #[test]
    fn the_dynamic_pool_is_always_reserved() {
        // Whatever the split, every address of the CPI's pool is reserved for BOSH.
        for (subnet, gw) in [("10.1.1.0/24", "10.1.1.1"), ("10.9.0.0/22", "10.9.0.1")] {
            let p = plan(
                net(subnet),
                ip(gw),
                Split {
                    reserved: 5,
                    static_ips: 0,
                },
            )
            .unwrap();
            for a in dynamic_pool(net(subnet)) {
                assert!(p.reserved.iter().any(|r| r.contains(a)), "{a} of {subnet}");
                assert!(!p.automatic.unwrap().contains(a));
            }
        }
    }

    #[test]
    fn the_gateway_is_reserved_even_without_a_reserved_head() {
        let p = plan(
            net("10.1.2.0/24"),
            ip("10.1.2.1"),
            Split {
                reserved: 0,
                static_ips: 0,
            },
        )
        .unwrap();
        assert_eq!(strings(&p.reserved), ["10.1.2.1", "10.1.2.192-10.1.2.254"]);
        assert_eq!(p.automatic.unwrap().to_string(), "10.1.2.2-10.1.2.191");
        // A gateway outside the head is added on its own.
        let p = plan(
            net("10.1.2.0/24"),
            ip("10.1.2.100"),
            Split {
                reserved: 10,
                static_ips: 0,
            },
        )
        .unwrap();
        assert_eq!(
            strings(&p.reserved),
            ["10.1.2.1-10.1.2.10", "10.1.2.100", "10.1.2.192-10.1.2.254"]
        );
    }

    #[test]
    fn blocks_are_cut_at_the_pool() {
        // A /26 has 64 addresses; the pool is .48-.62.
        let p = plan(
            net("10.1.3.0/26"),
            ip("10.1.3.1"),
            Split {
                reserved: 20,
                static_ips: 40,
            },
        )
        .unwrap();
        assert_eq!(
            strings(&p.reserved),
            ["10.1.3.1-10.1.3.20", "10.1.3.48-10.1.3.62"]
        );
        assert_eq!(p.static_range.unwrap().to_string(), "10.1.3.21-10.1.3.47");
        assert_eq!(p.automatic, None);
    }

    #[test]
    fn nothing_left_for_bosh_is_an_error() {
        let e = plan(
            net("10.1.4.0/26"),
            ip("10.1.4.1"),
            Split {
                reserved: 60,
                static_ips: 0,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("10.1.4.0/26 leaves no address"), "{e}");
        let e = plan(
            net("10.1.4.0/24"),
            ip("10.1.5.1"),
            Split {
                reserved: 20,
                static_ips: 0,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not in subnet"), "{e}");
        let e = plan(
            net("10.1.4.0/24"),
            ip("10.1.4.30"),
            Split {
                reserved: 20,
                static_ips: 40,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("would hold the gateway 10.1.4.30"), "{e}");
    }

    #[test]
    fn blocks_never_overlap() {
        let subnet = net("10.1.1.0/24");
        let pool: Vec<Ipv4Addr> = dynamic_pool(subnet).collect();
        for reserved in [0, 1, 20, 100, 191, 300] {
            for static_ips in [0, 1, 40, 200] {
                let split = Split {
                    reserved,
                    static_ips,
                };
                let Ok(p) = plan(subnet, ip("10.1.1.1"), split) else {
                    continue;
                };
                let in_reserved = |a: Ipv4Addr| p.reserved.iter().any(|r| r.contains(a));
                for a in subnet.hosts() {
                    let in_static = p.static_range.is_some_and(|r| r.contains(a));
                    let in_auto = p.automatic.is_some_and(|r| r.contains(a));
                    let owners = [in_reserved(a), in_static, in_auto];
                    assert_eq!(
                        owners.iter().filter(|o| **o).count(),
                        1,
                        "{split:?}: {a} belongs to {owners:?}"
                    );
                    assert_eq!(pool.contains(&a), in_reserved(a) && a >= pool[0]);
                }
            }
        }
    }

    fn host(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 1, last)
    }

    #[test]
    fn a_gateway_at_the_first_host_is_in_the_head_even_without_reserved_addresses() {
        let first = u32::from(host(1));
        assert_eq!(
            head_of(first, host(1), 0, u32::from(host(191))),
            Some(AddrRange {
                first: host(1),
                last: host(1)
            })
        );
        assert_eq!(head_of(first, host(9), 0, u32::from(host(191))), None);
        assert_eq!(block_of(first, 0, u32::from(host(191))), None);
        assert_eq!(
            block_of(first, 400, u32::from(host(191))).map(|b| b.last),
            Some(host(191)),
            "a block never reaches into the pool"
        );
    }

    #[test]
    fn the_gateway_is_reserved_on_its_own_only_when_nothing_else_holds_it() {
        let one = |n| AddrRange {
            first: host(n),
            last: host(n),
        };
        let pool = AddrRange {
            first: host(192),
            last: host(254),
        };
        assert_eq!(
            reserved_of(Some(one(1)), host(30), Some(pool)),
            vec![one(1), one(30), pool]
        );
        assert_eq!(
            reserved_of(Some(one(1)), host(1), Some(pool)),
            vec![one(1), pool]
        );
    }
}

//! The FleetLock server's open connections and what each is doing, so that no client can
//! take the service from others: every connection must complete its request (TLS
//! handshake, headers, body) within one deadline, and at the connection limit a connection
//! that has not completed a request is closed to admit the new one: one of the peer
//! holding the most such connections, found waiting for its client before others, oldest
//! first. A genuine client sends its request at once, so it is neither waiting nor old.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The limits a registry enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub(crate) connections: usize,
    /// Time a connection has for one whole request, from its accept (or its previous
    /// answer, when kept alive) to the last byte of the body.
    pub(crate) request_deadline: Duration,
    /// Extra time a connection whose headers are in gets before it is closed, so that the
    /// body's own timeout (at the deadline) can answer first.
    pub(crate) body_grace: Duration,
}

/// A connection's id in the registry.
type ConnId = u64;
/// Incomplete connections of one stage in the order they are shed: oldest first.
type ByAge = BTreeSet<(Instant, ConnId)>;

/// How far an incomplete connection got with its request, in the order connections are
/// shed: a connection found waiting for its client goes first, then one past a milestone
/// (TLS ClientHello or request headers in), and last one not yet looked at (a genuine
/// client's request is usually complete at the first look).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// A read found nothing new to read, and no milestone is reached.
    Stalled,
    /// The ClientHello or the request headers are in.
    Advanced,
    /// Accepted, not yet read.
    Fresh,
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshake, waiting for or reading a request since `since`; `body` once the headers
    /// are in.
    Incomplete {
        since: Instant,
        stage: Stage,
        body: bool,
    },
    /// A complete request is being answered.
    Serving,
}

#[derive(Debug)]
struct Entry {
    peer: IpAddr,
    phase: Phase,
    cancel: CancellationToken,
}

/// How many connections were closed by the registry, for the periodic log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Closed to make room for a new connection.
    pub(crate) shed: u64,
    /// Closed at their request deadline.
    pub(crate) timed_out: u64,
    /// Refused at accept: every open connection was being answered.
    pub(crate) refused: u64,
    /// Closed for a failed TLS handshake.
    pub(crate) handshake_failed: u64,
}

/// Incomplete connections by stage, each oldest first.
#[derive(Debug, Default)]
struct Queues {
    stalled: ByAge,
    advanced: ByAge,
    fresh: ByAge,
}

impl Queues {
    fn of(&mut self, stage: Stage) -> &mut ByAge {
        match stage {
            Stage::Stalled => &mut self.stalled,
            Stage::Advanced => &mut self.advanced,
            Stage::Fresh => &mut self.fresh,
        }
    }

    fn len(&self) -> usize {
        self.stalled.len() + self.advanced.len() + self.fresh.len()
    }

    /// The connection to shed first, with its stage.
    fn first_with_stage(&self) -> Option<(Stage, ConnId)> {
        [
            (Stage::Stalled, &self.stalled),
            (Stage::Advanced, &self.advanced),
            (Stage::Fresh, &self.fresh),
        ]
        .into_iter()
        .find_map(|(stage, q)| q.first().map(|&(_, id)| (stage, id)))
    }
}

#[derive(Debug, Default)]
struct Inner {
    next: ConnId,
    conns: HashMap<ConnId, Entry>,
    incomplete: Queues,
    by_peer: HashMap<IpAddr, Queues>,
    closed: Closed,
}

/// The open connections (one per server).
#[derive(Debug)]
pub(crate) struct Registry {
    limits: Limits,
    inner: Mutex<Inner>,
}

/// What [`Registry::admit`] decided.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve the connection.
    Admitted(Ticket),
    /// Only connections not yet read could make room: ask again once they were.
    Wait,
    /// Every open connection is being answered: close the new one.
    Refused,
}

/// A connection's place in the registry; dropping it (the connection ends) frees it.
#[derive(Debug)]
pub(crate) struct Ticket {
    registry: Arc<Registry>,
    id: ConnId,
    /// Cancelled when the registry closes the connection.
    pub(crate) cancel: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
    }
}

impl Inner {
    fn remove(&mut self, id: ConnId) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        self.unqueue(id, &entry);
        Some(entry)
    }

    fn unqueue(&mut self, id: ConnId, entry: &Entry) {
        if let Phase::Incomplete { since, stage, .. } = entry.phase {
            self.incomplete.of(stage).remove(&(since, id));
            if let Some(queues) = self.by_peer.get_mut(&entry.peer) {
                queues.of(stage).remove(&(since, id));
                if queues.len() == 0 {
                    self.by_peer.remove(&entry.peer);
                }
            }
        }
    }

    /// Sets the phase of `id` (if still open), keeping the queues in step.
    fn set_phase(&mut self, id: ConnId, phase: Phase) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.unqueue(id, &entry);
        if let Phase::Incomplete { since, stage, .. } = phase {
            self.incomplete.of(stage).insert((since, id));
            self.by_peer
                .entry(entry.peer)
                .or_default()
                .of(stage)
                .insert((since, id));
        }
        self.conns.insert(id, Entry { phase, ..entry });
    }

    /// The first connection to shed of the peer with the most incomplete connections.
    fn heaviest_first(&self) -> Option<(Stage, ConnId)> {
        let heaviest = self.by_peer.values().max_by_key(|q| q.len())?;
        heaviest.first_with_stage()
    }

    fn phase(&self, id: ConnId) -> Option<Phase> {
        self.conns.get(&id).map(|e| e.phase)
    }

    /// Closes connection `id` (its task sees the cancellation and drops the socket).
    fn close(&mut self, id: ConnId) {
        if let Some(entry) = self.remove(id) {
            entry.cancel.cancel();
        }
    }
}

impl Registry {
    /// An empty registry enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The limits enforced.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (every change is a few
        // map operations); keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer` accepted at `now`. At the connection limit, the
    /// peer with the most incomplete connections loses its first to shed (so a peer can
    /// take room only from itself once it holds the most). When that one was not looked
    /// at yet and the caller is `patient`, nothing is closed: [`Admission::Wait`] (let
    /// the connections be read, then ask again).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant, patient: bool) -> Admission {
        let mut inner = self.lock();
        let victim = if inner.conns.len() >= self.limits.connections {
            match inner.heaviest_first() {
                Some(v) => Some(v),
                None => {
                    inner.closed.refused += 1;
                    return Admission::Refused;
                }
            }
        } else {
            None
        };
        if let Some((stage, victim)) = victim {
            if patient && stage == Stage::Fresh {
                return Admission::Wait;
            }
            inner.close(victim);
            inner.closed.shed += 1;
        }
        let id = inner.next;
        inner.next += 1;
        let cancel = CancellationToken::new();
        inner.conns.insert(
            id,
            Entry {
                peer,
                phase: Phase::Serving,
                cancel: cancel.clone(),
            },
        );
        inner.set_phase(id, incomplete(now, Stage::Fresh));
        Admission::Admitted(Ticket {
            registry: self.clone(),
            id,
            cancel,
        })
    }

    /// Closes the first incomplete connection to shed of the peer holding the most (out
    /// of file descriptors at accept). Whether there was one.
    pub(crate) fn shed_one(&self) -> bool {
        let mut inner = self.lock();
        match inner.heaviest_first() {
            Some((_, victim)) => {
                inner.close(victim);
                inner.closed.shed += 1;
                true
            }
            None => false,
        }
    }

    /// Closes every connection past its deadline at `now`; returns the counts closed so
    /// far and resets them.
    pub(crate) fn reap(&self, now: Instant) -> Closed {
        let mut inner = self.lock();
        let Some(cutoff) = now.checked_sub(self.limits.request_deadline) else {
            return std::mem::take(&mut inner.closed);
        };
        let q = &inner.incomplete;
        let late: Vec<ConnId> = [&q.stalled, &q.advanced, &q.fresh]
            .into_iter()
            .flat_map(|q| q.range(..=(cutoff, ConnId::MAX)).map(|&(_, id)| id))
            .collect();
        for id in late {
            let expired = match inner.phase(id) {
                Some(Phase::Incomplete {
                    since, body: true, ..
                }) => since + self.limits.request_deadline + self.limits.body_grace <= now,
                Some(Phase::Incomplete { body: false, .. }) => true,
                _ => false,
            };
            if expired {
                inner.close(id);
                inner.closed.timed_out += 1;
            }
        }
        std::mem::take(&mut inner.closed)
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.lock().conns.len()
    }
}

/// An incomplete phase since `since` at `stage`.
fn incomplete(since: Instant, stage: Stage) -> Phase {
    Phase::Incomplete {
        since,
        stage,
        body: false,
    }
}

impl Ticket {
    /// A read found nothing to read: a connection that got nowhere yet is now shed
    /// before others.
    pub(crate) fn stalled(&self) {
        let mut inner = self.registry.lock();
        if let Some(Phase::Incomplete {
            since,
            stage: Stage::Fresh,
            body,
        }) = inner.phase(self.id)
        {
            let phase = Phase::Incomplete {
                since,
                stage: Stage::Stalled,
                body,
            };
            inner.set_phase(self.id, phase);
        }
    }

    /// The TLS ClientHello is in.
    pub(crate) fn hello(&self) {
        let mut inner = self.registry.lock();
        if let Some(Phase::Incomplete { since, body, .. }) = inner.phase(self.id) {
            let phase = Phase::Incomplete {
                since,
                stage: Stage::Advanced,
                body,
            };
            inner.set_phase(self.id, phase);
        }
    }

    /// The headers are in: the deadline by which the body must be complete (`None` when
    /// the registry closed the connection meanwhile).
    pub(crate) fn reading_body(&self) -> Option<Instant> {
        let mut inner = self.registry.lock();
        let Some(Phase::Incomplete { since, .. }) = inner.phase(self.id) else {
            return None;
        };
        let phase = Phase::Incomplete {
            since,
            stage: Stage::Advanced,
            body: true,
        };
        inner.set_phase(self.id, phase);
        Some(since + self.registry.limits.request_deadline)
    }

    /// The TLS handshake failed (counted for the periodic log line, not logged each).
    pub(crate) fn handshake_failed(&self) {
        self.registry.lock().closed.handshake_failed += 1;
    }

    /// The request is complete: the connection is no longer shed nor timed out while it
    /// is answered.
    pub(crate) fn serving(&self) {
        self.registry.lock().set_phase(self.id, Phase::Serving);
    }

    /// The answer is out: a kept-alive connection waits for its next request, which has
    /// a deadline from `now`, and is shed like a stalled one.
    pub(crate) fn answered(&self, now: Instant) {
        let mut inner = self.registry.lock();
        if inner.phase(self.id) == Some(Phase::Serving) {
            inner.set_phase(self.id, incomplete(now, Stage::Stalled));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(connections: usize) -> Arc<Registry> {
        Registry::new(Limits {
            connections,
            request_deadline: Duration::from_secs(10),
            body_grace: Duration::from_secs(1),
        })
    }

    fn admitted(r: &Arc<Registry>, peer: IpAddr, now: Instant) -> Ticket {
        match r.admit(peer, now, false) {
            Admission::Admitted(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn at_the_limit_the_oldest_incomplete_connection_makes_room() {
        let r = registry(3);
        let t0 = Instant::now();
        let a = admitted(&r, ip(2), at(t0, 0));
        let b = admitted(&r, ip(2), at(t0, 1));
        let c = admitted(&r, ip(2), at(t0, 2));
        // a completed its request: it is answered, not shed.
        a.serving();
        let d = admitted(&r, ip(1), at(t0, 3));
        assert!(!a.cancel.is_cancelled());
        assert!(b.cancel.is_cancelled());
        assert!(!c.cancel.is_cancelled() && !d.cancel.is_cancelled());
        assert_eq!(r.open(), 3);
        // Answered and kept alive, a waits for its next request: it goes first.
        a.answered(at(t0, 4));
        let _e = admitted(&r, ip(1), at(t0, 5));
        assert!(a.cancel.is_cancelled() && !c.cancel.is_cancelled());
        assert_eq!(r.reap(at(t0, 6)).shed, 2);
    }

    #[test]
    fn the_peer_with_the_most_incomplete_connections_loses_one() {
        let r = registry(4);
        let t0 = Instant::now();
        let other = admitted(&r, ip(1), at(t0, 0));
        let a = admitted(&r, ip(2), at(t0, 1));
        let b = admitted(&r, ip(2), at(t0, 2));
        let c = admitted(&r, ip(2), at(t0, 3));
        // The oldest of all is `other`, but ip(2) holds the most.
        let _d = admitted(&r, ip(1), at(t0, 4));
        assert!(a.cancel.is_cancelled());
        assert!(!other.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled() && !c.cancel.is_cancelled());
        drop(a);
        assert_eq!(r.open(), 4);
    }

    #[test]
    fn connections_found_waiting_go_before_those_not_yet_read() {
        let r = registry(3);
        let t0 = Instant::now();
        let fresh = admitted(&r, ip(1), at(t0, 0));
        let hello = admitted(&r, ip(2), at(t0, 1));
        hello.stalled();
        hello.hello();
        let stalled = admitted(&r, ip(2), at(t0, 2));
        stalled.stalled();
        let d = admitted(&r, ip(2), at(t0, 3));
        assert!(stalled.cancel.is_cancelled());
        let _e = admitted(&r, ip(2), at(t0, 4));
        assert!(hello.cancel.is_cancelled() && !fresh.cancel.is_cancelled());
        // Only connections not yet read are left: a patient caller waits for them.
        assert!(matches!(r.admit(ip(2), at(t0, 5), true), Admission::Wait));
        d.stalled();
        let _f = admitted(&r, ip(2), at(t0, 6));
        assert!(d.cancel.is_cancelled() && !fresh.cancel.is_cancelled());
    }

    #[test]
    fn when_every_connection_is_answered_a_new_one_is_refused() {
        let r = registry(1);
        let a = admitted(&r, ip(1), Instant::now());
        a.serving();
        assert!(matches!(
            r.admit(ip(2), Instant::now(), true),
            Admission::Refused
        ));
        assert_eq!(r.reap(Instant::now()).refused, 1);
        drop(a);
        admitted(&r, ip(2), Instant::now());
    }

    #[test]
    fn one_deadline_covers_the_whole_request() {
        let r = registry(10);
        let t0 = Instant::now();
        let idle = admitted(&r, ip(1), t0);
        let body = admitted(&r, ip(1), t0);
        let done = admitted(&r, ip(1), t0);
        assert_eq!(body.reading_body(), Some(at(t0, 10_000)));
        done.serving();
        assert_eq!(r.reap(at(t0, 9_999)).timed_out, 0);
        assert_eq!(r.reap(at(t0, 10_000)).timed_out, 1);
        assert!(idle.cancel.is_cancelled() && !body.cancel.is_cancelled());
        // The body's own timeout answers first; the grace closes it if that fails.
        assert_eq!(r.reap(at(t0, 11_000)).timed_out, 1);
        assert!(body.cancel.is_cancelled() && !done.cancel.is_cancelled());
        // A kept-alive connection's next request has a deadline from its answer.
        done.answered(at(t0, 20_000));
        assert_eq!(r.reap(at(t0, 29_999)).timed_out, 0);
        assert_eq!(r.reap(at(t0, 30_000)).timed_out, 1);
        assert_eq!(r.open(), 0);
    }
}

//! What a FleetLock request is answered with: the semaphore of its group taken or given
//! back under the client's id, or a refusal in the protocol's error format. An id that
//! names a MoltenCore node is refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::GetOptions;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::protocol::{self, HEADER, Operation, Refusal};
use super::registry::Ticket;
use crate::cluster::{Etcd, Keys};
use crate::node_name::NodeName;
use crate::reboot::semaphore::{Group, Holder, HolderKind, Semaphore, SemaphoreError, Take};
use crate::timestamp::Timestamp;

/// Largest request body read (a FleetLock body is well under 1 KiB).
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// Time a connection has to complete one request: TLS handshake, headers and body
/// together, from its accept (or, kept alive, from its previous answer).
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// How long one read of the node names is used: a request costs no extra etcd round trip
/// while the cluster is busy, and a node registered meanwhile is known within seconds.
const NODE_NAMES_TTL: Duration = Duration::from_secs(5);

/// The names of the node records, read to refuse FleetLock ids that name a node: such a
/// client would hold its slot under the node's name, and that node's manager would take
/// it for its own.
struct NodeNames {
    etcd: Etcd,
    keys: Keys,
    read: Mutex<Option<(Instant, Arc<HashSet<NodeName>>)>>,
}

impl NodeNames {
    async fn names_a_node(&self, id: &str) -> Result<bool, Refusal> {
        Ok(self.current().await?.contains(id))
    }

    /// The names, read again when the last read is older than [`NODE_NAMES_TTL`].
    async fn current(&self) -> Result<Arc<HashSet<NodeName>>, Refusal> {
        let cached = self.read.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((at, names)) = cached
            && at.elapsed() < NODE_NAMES_TTL
        {
            return Ok(names);
        }
        let prefix = self.keys.nodes();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let found = self
            .etcd
            .client()
            .get(prefix.as_str(), Some(options))
            .await
            .map_err(|e| {
                let e = self.etcd.error("reading the node records", &e);
                Refusal::new(503, "semaphore_unavailable", e.to_string())
            })?;
        // The keys' names as found, like the records' (see `NodeName`).
        let names: HashSet<NodeName> = found
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix))
            .map(NodeName::from_record)
            .collect();
        let names = Arc::new(names);
        *self.read.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), names.clone()));
        Ok(names)
    }
}

/// What the server answers with: one semaphore per served group.
pub(crate) struct FleetLock {
    groups: Vec<Group>,
    semaphores: HashMap<Group, Semaphore>,
    nodes: NodeNames,
}

impl FleetLock {
    /// Serves the groups of `semaphores`; ids that name a node under `keys` are refused.
    pub(crate) fn new(semaphores: Vec<Semaphore>, etcd: Etcd, keys: Keys) -> FleetLock {
        FleetLock {
            groups: semaphores.iter().map(|s| s.group().clone()).collect(),
            semaphores: semaphores
                .into_iter()
                .map(|s| (s.group().clone(), s))
                .collect(),
            nodes: NodeNames {
                etcd,
                keys,
                read: Mutex::new(None),
            },
        }
    }

    /// Reads and checks one request whose headers are in; the body must be complete by
    /// `deadline`.
    async fn receive(
        &self,
        req: Request<Incoming>,
        deadline: Instant,
    ) -> Result<protocol::Request, Refusal> {
        let operation = protocol::route(req.method().as_str(), req.uri().path())?;
        let values: Vec<&[u8]> = req
            .headers()
            .get_all(HEADER)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        protocol::check_header(&values)?;
        let body = read_body(req.into_body(), deadline).await?;
        protocol::parse(operation, &body, &self.groups)
    }

    /// Answers one complete request: 200 with an empty body, or a refusal.
    async fn act(&self, request: protocol::Request) -> Result<(), Refusal> {
        let outcome = if self.nodes.names_a_node(&request.id).await? {
            Err(names_a_node(&request.id))
        } else {
            let semaphore = &self.semaphores[&request.group];
            match request.operation {
                Operation::PreReboot => lock(semaphore, &request.id).await,
                Operation::SteadyState => unlock(semaphore, &request.id).await,
            }
        };
        tracing::info!(
            operation = ?request.operation,
            group = %request.group,
            id = %protocol_id(&request.id),
            refused = outcome.as_ref().err().map(|r| r.kind),
            "fleetlock request"
        );
        outcome
    }

    /// Answers one request on the connection of `ticket`, which knows its deadline and
    /// learns when the request is complete.
    pub(crate) async fn answer(
        &self,
        req: Request<Incoming>,
        ticket: &Ticket,
    ) -> Result<(), Refusal> {
        let deadline = ticket.reading_body().unwrap_or_else(Instant::now);
        let received = self.receive(req, deadline).await;
        ticket.serving();
        self.act(received?).await
    }
}

/// The id as logged: bounded (it was validated, but may be long).
fn protocol_id(id: &str) -> String {
    crate::reboot::semaphore::cut(id, 64)
}

async fn read_body(body: Incoming, deadline: Instant) -> Result<Bytes, Refusal> {
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout_at(deadline.into(), collect).await {
        Err(_) => Err(Refusal::new(
            408,
            "body_timeout",
            format!(
                "the request was not complete within {}s",
                REQUEST_DEADLINE.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::new(
            413,
            "body_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(Refusal::new(
            400,
            "bad_request_body",
            format!("the body could not be read: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn names_a_node(id: &str) -> Refusal {
    Refusal::new(
        409,
        "id_names_a_node",
        format!(
            "'{}' is the name of a MoltenCore node; a FleetLock client must use an id of its \
             own (its machine id). `cpi nodes release` frees a slot taken under it",
            protocol_id(id)
        ),
    )
}

fn unavailable(e: SemaphoreError) -> Refusal {
    match e {
        SemaphoreError::Busy { .. } => Refusal::new(503, "semaphore_busy", e.to_string()),
        other => Refusal::new(503, "semaphore_unavailable", other.to_string()),
    }
}

fn held_by_node(id: &str) -> Refusal {
    Refusal::new(
        409,
        "held_by_node",
        format!(
            "'{}' holds its slot as a MoltenCore node; only its reboot manager or \
             `cpi nodes release` frees it",
            protocol_id(id)
        ),
    )
}

async fn lock(semaphore: &Semaphore, id: &str) -> Result<(), Refusal> {
    let holder = Holder {
        id: id.to_string(),
        kind: HolderKind::Fleetlock,
        node: None,
        boot_id: None,
        since: Timestamp::now().to_string(),
        why: "FleetLock pre-reboot".into(),
    };
    match semaphore.take(holder).await.map_err(unavailable)? {
        Take::Taken => Ok(()),
        Take::AlreadyHeld(h) if h.kind == HolderKind::Fleetlock => Ok(()),
        Take::AlreadyHeld(_) => Err(held_by_node(id)),
        Take::Full(holders) => {
            let ids: Vec<String> = holders.iter().map(|h| protocol_id(&h.id)).collect();
            Err(Refusal::new(
                409,
                "failed_lock_semaphore_full",
                format!(
                    "all {} reboot slot(s) of group {} are taken (by {})",
                    holders.len(),
                    semaphore.group(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

async fn unlock(semaphore: &Semaphore, id: &str) -> Result<(), Refusal> {
    let node_holds = semaphore
        .update(|doc| match doc.holder(id) {
            Some(h) if h.kind == HolderKind::Node => (true, false),
            Some(_) => {
                doc.give_back(id);
                (false, true)
            }
            None => (false, false),
        })
        .await
        .map_err(unavailable)?;
    if node_holds {
        Err(held_by_node(id))
    } else {
        Ok(())
    }
}

/// The HTTP response of `outcome`.
pub(crate) fn response(outcome: Result<(), Refusal>) -> Response<Full<Bytes>> {
    let (status, body) = match outcome {
        Ok(()) => (StatusCode::OK, Bytes::new()),
        Err(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            Bytes::from(r.body()),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("a response with a valid status and header")
}

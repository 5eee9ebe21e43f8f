//! A Docker client for one node: bollard over mutual TLS, with errors that name the node.

use std::sync::Arc;
use std::time::Duration;

use bollard::{BollardRequest, ClientVersion, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) use super::error::describe;
use super::error::{DockerError, Doing};
use crate::node_name::NodeName;

/// How long talking to a node may take.
#[derive(Debug, Clone, Copy)]
pub struct DockerTimeouts {
    /// TCP and TLS connect.
    pub connect: Duration,
    /// One whole request, body included.
    pub request: Duration,
    /// Silence in the middle of a stream (see [`super::idle`]).
    pub idle: Duration,
}

/// How to reach every node's Docker: TLS material and timeouts shared by all nodes.
#[derive(Clone)]
pub struct DockerAccess {
    tls: Arc<rustls::ClientConfig>,
    /// `None` negotiates with each node.
    pub(crate) api_version: Option<ClientVersion>,
    /// How long each kind of Docker call may take.
    pub(crate) timeouts: DockerTimeouts,
}

impl DockerAccess {
    /// Prepares TLS from PEM text. `api_version` is `"auto"` or `MAJOR.MINOR`.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        api_version: &str,
        timeouts: DockerTimeouts,
    ) -> Result<DockerAccess, DockerError> {
        let tls = super::tls::client_config(ca_pem, cert_pem, key_pem)?;
        let api_version = parse_api_version(api_version);
        Ok(DockerAccess {
            tls,
            api_version,
            timeouts,
        })
    }

    /// A client for the node `name` at `endpoint` (`tcp://ip:port` or `https://ip:port`).
    /// Connecting is lazy; the first request reports an unreachable node.
    pub async fn connect(&self, name: &str, endpoint: &str) -> Result<NodeDocker, DockerError> {
        let address = endpoint_address(name, endpoint)?;
        let client = Arc::new(Client::builder(TokioExecutor::new()).build(self.https_connector()));
        let node_name = name.to_string();
        let transport = move |req: BollardRequest| {
            let client = Arc::clone(&client);
            let node = node_name.clone();
            crate::roundtrips::docker();
            async move {
                // At debug level every request is timed (until its answer's head), so a
                // slow call shows which request of which node it waited for.
                let started = std::time::Instant::now();
                let what = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| format!("{} {}", req.method(), req.uri().path()));
                let answer = client.request(req).await;
                if let Some(what) = what {
                    let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
                    tracing::debug!(
                        node = %node,
                        "docker {what}: {status} after {} ms",
                        started.elapsed().as_millis()
                    );
                }
                answer.map_err(|e| bollard::errors::Error::from(std::io::Error::other(e)))
            }
        };
        let version = self.api_version.unwrap_or(*bollard::API_DEFAULT_VERSION);
        // Control requests get the idle timeout: a node that leaves one unanswered that
        // long counts as gone, as it does mid-stream.
        let docker = Docker::connect_with_custom_transport(
            transport,
            Some(format!("https://{address}")),
            self.timeouts.idle.as_secs().max(1),
            &version,
        )
        .map_err(|source| DockerError::ClientSetup {
            node: name.to_string(),
            source,
        })?;
        let node = NodeDocker {
            // The name of a node record (see `NodeName`: records are read as found).
            name: NodeName::from_record(name),
            endpoint: endpoint.to_string(),
            long: docker.clone().with_timeout(self.timeouts.request),
            docker,
            idle_timeout: self.timeouts.idle,
        };
        if self.api_version.is_some() {
            return Ok(node);
        }
        self.negotiated(node).await
    }

    /// TCP with the connect timeout and keepalive, then TLS with the cluster's material.
    fn https_connector(&self) -> hyper_rustls::HttpsConnector<HttpConnector> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.timeouts.connect));
        http.set_nodelay(true);
        // A node that dies mid-transfer is noticed by TCP, not only by our idle timeouts.
        http.set_keepalive(Some(Duration::from_secs(30)));
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http)
    }

    /// `node` speaking the API version its daemon and the client both know.
    async fn negotiated(&self, mut node: NodeDocker) -> Result<NodeDocker, DockerError> {
        let docker = node
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| node.error("negotiating the API version", &e))?;
        node.long = docker.clone().with_timeout(self.timeouts.request);
        node.docker = docker;
        Ok(node)
    }
}

/// `host:port` of a node's registered endpoint (`tcp://host:port` or `https://host:port`).
fn endpoint_address(name: &str, endpoint: &str) -> Result<String, DockerError> {
    Ok(endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| DockerError::Setup {
            message: format!("node {name}: docker endpoint '{endpoint}' must be tcp://host:port"),
        })?
        .trim_end_matches('/')
        .to_string())
}

fn parse_api_version(v: &str) -> Option<ClientVersion> {
    let (major, minor) = v.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// The Docker daemon of one node.
#[derive(Clone)]
pub struct NodeDocker {
    /// Node name, for error messages and logs.
    pub(crate) name: NodeName,
    /// The endpoint as registered.
    pub(crate) endpoint: String,
    /// The client for control requests (inspect, create, start, ...), each answered within
    /// the idle timeout.
    pub(crate) docker: Docker,
    /// The same daemon for requests whose answer waits for a whole transfer (stemcell
    /// imports, image loads, disk archive uploads and downloads) or a large removal (see
    /// [`NodeDocker::for_removal`]), bounded by the request timeout; transfers are watched
    /// by [`super::idle`].
    pub(crate) long: Docker,
    /// How long this node may stay silent mid-stream (see [`super::idle`]).
    pub(crate) idle_timeout: Duration,
}

impl NodeDocker {
    /// The daemon's version string; proves the node is reachable and trusts us.
    pub async fn version(&self) -> Result<String, DockerError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.error("asking its version", &e))?;
        Ok(v.version.unwrap_or_else(|| "unknown".into()))
    }

    /// The client for a removal. Removing a large container or volume can legitimately take
    /// longer than the idle timeout, so it runs on the long client, but only after the node
    /// answered a ping within the idle timeout: a frozen node fails here instead of holding
    /// the call for the request timeout.
    pub(crate) async fn for_removal(&self) -> Result<&Docker, DockerError> {
        self.docker
            .ping()
            .await
            .map_err(|e| self.error("answering a ping before a removal", &e))?;
        Ok(&self.long)
    }

    /// Which node a request goes to and `what` it is for, to name both in an error.
    pub(crate) fn doing(&self, what: &str) -> Doing {
        Doing {
            node: self.name.to_string(),
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
        }
    }

    /// The error for `e`, naming this node, its endpoint and what was being done.
    pub(crate) fn error(&self, doing: &str, e: &bollard::errors::Error) -> DockerError {
        DockerError::from_bollard(self.doing(doing), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_api_version("auto").is_none());
    }

    #[test]
    fn an_endpoint_gives_its_address_or_names_the_node() {
        assert_eq!(
            endpoint_address("n1", "tcp://10.0.0.1:2376/").unwrap(),
            "10.0.0.1:2376"
        );
        assert_eq!(
            endpoint_address("n1", "https://10.0.0.1:2376").unwrap(),
            "10.0.0.1:2376"
        );
        assert_eq!(
            endpoint_address("n1", "unix:///var/run/docker.sock")
                .unwrap_err()
                .to_string(),
            "node n1: docker endpoint 'unix:///var/run/docker.sock' must be tcp://host:port"
        );
    }
}

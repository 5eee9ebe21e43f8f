//! Docker failures as BOSH errors: a node that does not answer (or a 5xx) is worth a
//! retry; a request the daemon refused is not; a bad name or TLS material is the CPI's own.
use crate::docker::DockerError;
use crate::protocol::CpiError;

impl From<DockerError> for CpiError {
    /// A node that does not answer (or answers 5xx) is a retriable `CloudError`; a request
    /// the daemon refused, or a result that does not fit, is a `CloudError` a retry repeats;
    /// a bad name, bad TLS material or a bad stemcell source is the CPI's own `CpiError`.
    fn from(e: DockerError) -> CpiError {
        use DockerError as D;
        let message = e.to_string();
        match e {
            D::Unreachable { .. }
            | D::Timeout { .. }
            | D::Stalled { .. }
            | D::Unanswered { .. }
            | D::Archive { .. }
            | D::Task { .. }
            | D::Verify { .. } => CpiError::cloud(message, true),
            D::Daemon { rejected, .. } => CpiError::cloud(message, !rejected),
            D::NotFound { .. }
            | D::Conflict { .. }
            | D::Forbidden { .. }
            | D::BadRequest { .. }
            | D::Stream { .. }
            | D::Client { .. }
            | D::NetworkMismatch { .. }
            | D::TooLarge { .. }
            | D::Mount { .. }
            | D::InVm { .. } => CpiError::cloud(message, false),
            D::InvalidName { .. }
            | D::InvalidReference { .. }
            | D::Setup { .. }
            | D::ClientSetup { .. }
            | D::Tls(_)
            | D::Source { .. }
            | D::HelperImage { .. }
            | D::SourceRead(_) => CpiError::cpi(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Doing;
    use crate::protocol::ErrorKind;

    fn at() -> Doing {
        Doing::sample()
    }

    fn kind_and_retry(e: DockerError) -> (ErrorKind, bool) {
        let text = e.to_string();
        let c = CpiError::from(e);
        assert_eq!(c.message, text, "the message is the error's own text");
        (c.kind, c.ok_to_retry)
    }

    #[test]
    fn a_node_that_does_not_answer_is_worth_a_retry() {
        for e in [
            DockerError::Unreachable {
                at: at(),
                detail: "connection refused".into(),
            },
            DockerError::Timeout {
                at: at(),
                detail: "Timeout error".into(),
            },
            DockerError::Stalled { at: at(), secs: 5 },
            DockerError::Unanswered {
                at: at(),
                secs: 5,
                detail: "x".into(),
            },
            DockerError::Daemon {
                at: at(),
                status: 500,
                message: "x".into(),
                rejected: false,
            },
            DockerError::Archive {
                node: "n1".into(),
                what: "volume archive unreadable".into(),
                source: std::io::Error::other("x"),
            },
            DockerError::Verify {
                message: "copy check failed".into(),
            },
        ] {
            assert_eq!(kind_and_retry(e), (ErrorKind::CloudError, true));
        }
    }

    #[tokio::test]
    async fn a_transfer_task_that_ended_without_an_answer_is_worth_a_retry() {
        let ended = tokio::spawn(std::future::pending::<()>());
        ended.abort();
        let source = ended.await.unwrap_err();
        let e = DockerError::Task {
            what: "export task".into(),
            source,
        };
        assert_eq!(kind_and_retry(e), (ErrorKind::CloudError, true));
    }

    #[test]
    fn a_refused_request_repeats_on_retry() {
        let message = || "x".to_string();
        for e in [
            DockerError::NotFound {
                at: at(),
                message: message(),
            },
            DockerError::Conflict {
                at: at(),
                message: message(),
            },
            DockerError::Forbidden {
                at: at(),
                message: message(),
            },
            DockerError::BadRequest {
                at: at(),
                status: 400,
                message: message(),
            },
            DockerError::Daemon {
                at: at(),
                status: 500,
                message: "invalid mount".into(),
                rejected: true,
            },
            DockerError::Stream {
                at: at(),
                detail: message(),
            },
            DockerError::Client {
                at: at(),
                detail: message(),
            },
            DockerError::NetworkMismatch {
                node: "n1".into(),
                network: "bosh".into(),
                found: "10.9.0.0/24 gateway 10.9.0.1".into(),
                subnet: "10.1.1.0/24".into(),
                gateway: "10.1.1.1".into(),
            },
            DockerError::TooLarge {
                node: "n1".into(),
                path: "/p".into(),
                container: "vm-1".into(),
                limit: "1 MiB".into(),
                what: "agent settings",
            },
        ] {
            assert_eq!(kind_and_retry(e), (ErrorKind::CloudError, false));
        }
    }

    #[test]
    fn bad_names_material_and_sources_are_the_cpis_own() {
        for e in [
            DockerError::InvalidName {
                shown: "x/..".into(),
                max: 255,
            },
            DockerError::InvalidReference { shown: "UP".into() },
            DockerError::Setup {
                message: "Docker CA certificate PEM holds no certificate".into(),
            },
            DockerError::Source {
                message: "reading the stemcell image failed".into(),
            },
            DockerError::HelperImage {
                reference: "moltencore-helper:1".into(),
                source: std::io::Error::other("x"),
            },
            DockerError::ClientSetup {
                node: "n1".into(),
                source: bollard::errors::Error::RequestTimeoutError,
            },
        ] {
            assert_eq!(kind_and_retry(e), (ErrorKind::CpiError, false));
        }
    }
}

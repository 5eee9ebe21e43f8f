//! The blobstore a new VM's agent is given. The agent exits at start when it has none it
//! can use, so `create_vm` decides before it makes anything: blobstores that arrive in
//! `env.bosh.blobstores` (a director's) win, else the CPI's `agent.blobstore` (the job's
//! `blobstore` or `moltencore_cpi.agent.blobstore` property), else a clear error.

use serde_json::Value;

use crate::config::{AgentConfig, BlobstoreSettings, ConfigError};
use crate::protocol::Object;

/// Why the new VM's agent would get no usable blobstore; every one is the request's or
/// the configuration's fault.
#[derive(Debug, thiserror::Error)]
pub enum BlobstoreError {
    /// Neither `env.bosh.blobstores` nor the configuration brings one.
    #[error(
        "create_vm: the agent would get no blobstore and exit at start: set the CPI job's \
         `blobstore` property (`provider: local` and `path`, as bosh-deployment's \
         cloud_provider has it) or `moltencore_cpi.agent.blobstore` (cpi.json \
         agent.blobstore), or send env.bosh.blobstores"
    )]
    None,
    /// `env.bosh` is no object.
    #[error("create_vm: env.bosh must be an object")]
    BoshNotAnObject,
    /// `env.bosh.blobstores` is no list.
    #[error("create_vm: env.bosh.blobstores must be a list of {{provider, options}}")]
    NotAList,
    /// An entry the agent could not read; serde names the field, never the value of an
    /// options entry (and is cut short).
    #[error("create_vm: {key} must be {{provider, options}}: {}", cut(&.source.to_string()))]
    Entry {
        /// The cloud_properties key of the entry.
        key: String,
        /// What serde could not read.
        source: serde_json::Error,
    },
    /// An entry the agent would refuse.
    #[error("create_vm: {}: {}", .0.key, .0.problem)]
    Unusable(ConfigError),
}

/// What the settings' top-level `blobstore` carries: the CPI's own blobstore, or nothing
/// when `env.bosh.blobstores` (which the agent prefers) brings usable ones, so the CPI's
/// credentials do not land in VMs that never use them.
pub fn for_agent<'a>(
    env: &Object,
    agent: &'a AgentConfig,
) -> Result<Option<&'a BlobstoreSettings>, BlobstoreError> {
    if env_blobstores(env)? > 0 {
        return Ok(None);
    }
    agent
        .blobstore
        .as_ref()
        .map(Some)
        .ok_or(BlobstoreError::None)
}

/// How many blobstores `env.bosh.blobstores` holds, each checked as the agent would use it.
fn env_blobstores(env: &Object) -> Result<usize, BlobstoreError> {
    let Some(bosh) = env.get("bosh") else {
        return Ok(0);
    };
    let Value::Object(bosh) = bosh else {
        return Err(BlobstoreError::BoshNotAnObject);
    };
    let list = match bosh.get("blobstores") {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(BlobstoreError::NotAList),
    };
    for (i, entry) in list.iter().enumerate() {
        let key = format!("env.bosh.blobstores[{i}]");
        let parsed: BlobstoreSettings =
            serde_json::from_value(entry.clone()).map_err(|source| BlobstoreError::Entry {
                key: key.clone(),
                source,
            })?;
        if let Some(problem) = parsed.problem(&key) {
            return Err(BlobstoreError::Unusable(problem));
        }
    }
    Ok(list.len())
}

fn cut(text: &str) -> String {
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::protocol::CpiError;
    use serde_json::json;

    fn agent(blobstore: Option<Value>) -> AgentConfig {
        AgentConfig {
            mbus: Secret::new("https://mbus:pw@0.0.0.0:6868"),
            ntp: vec![],
            blobstore: blobstore.map(|b| serde_json::from_value(b).unwrap()),
        }
    }

    fn env(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    const LOCAL: &str =
        r#"{"provider":"local","options":{"blobstore_path":"/var/vcap/micro_bosh/data/cache"}}"#;

    #[test]
    fn the_configured_blobstore_serves_when_env_brings_none() {
        let a = agent(Some(serde_json::from_str(LOCAL).unwrap()));
        for e in [
            json!({}),
            json!({"bosh": {}}),
            json!({"bosh": {"blobstores": []}}),
            json!({"bosh": {"blobstores": null, "group": "g"}}),
        ] {
            let chosen = for_agent(&env(e.clone()), &a).unwrap();
            assert_eq!(chosen.map(|b| b.provider.as_str()), Some("local"), "{e}");
        }
    }

    #[test]
    fn env_blobstores_win_over_the_config() {
        let a = agent(Some(serde_json::from_str(LOCAL).unwrap()));
        let e = env(json!({"bosh": {"blobstores": [{"provider": "dav",
            "options": {"endpoint": "https://10.1.1.6:25250", "password": "p"}}]}}));
        assert_eq!(for_agent(&e, &a).unwrap(), None);
        // Also without any configured blobstore.
        assert_eq!(for_agent(&e, &agent(None)).unwrap(), None);
    }

    #[test]
    fn no_blobstore_at_all_is_a_cpi_error_naming_the_properties() {
        let e = CpiError::from(
            for_agent(&env(json!({"bosh": {"group": "g"}})), &agent(None)).unwrap_err(),
        );
        assert_eq!(e.kind, crate::protocol::ErrorKind::CpiError);
        assert!(!e.ok_to_retry);
        for name in [
            "blobstore",
            "moltencore_cpi.agent.blobstore",
            "env.bosh.blobstores",
        ] {
            assert!(e.message.contains(name), "{name}: {}", e.message);
        }
    }

    #[test]
    fn unusable_env_blobstores_are_named_without_their_secrets() {
        let a = agent(Some(serde_json::from_str(LOCAL).unwrap()));
        for (bad, key) in [
            (json!({"bosh": "x"}), "env.bosh"),
            (
                json!({"bosh": {"blobstores": {"provider": "dav"}}}),
                "env.bosh.blobstores",
            ),
            (
                json!({"bosh": {"blobstores": [{"options": {"password": "SECRET-E"}}]}}),
                "env.bosh.blobstores[0]",
            ),
            (
                json!({"bosh": {"blobstores": [{"provider": "dav"}, {"provider": "",
                    "options": {"password": "SECRET-E"}}]}}),
                "env.bosh.blobstores[1].provider",
            ),
            (
                json!({"bosh": {"blobstores": [{"provider": "local",
                    "options": {"password": "SECRET-E"}}]}}),
                "env.bosh.blobstores[0].options.blobstore_path",
            ),
        ] {
            let e = CpiError::from(for_agent(&env(bad.clone()), &a).unwrap_err());
            assert_eq!(e.kind, crate::protocol::ErrorKind::CpiError, "{bad}");
            assert!(e.message.contains(key), "{key}: {}", e.message);
            assert!(!e.message.contains("SECRET-E"), "{}", e.message);
        }
    }
}

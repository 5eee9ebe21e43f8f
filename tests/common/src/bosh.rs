//! Helpers for the BOSH release's tests: the repository's release files, and job templates
//! rendered with Debian's ruby through `tests/bosh/render_template.rb`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

/// The repository (= the BOSH release folder): two levels above this crate's folder
/// (`tests/common`).
pub fn repo() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.canonicalize()
        .unwrap_or_else(|e| panic!("the repository {}: {e}", repo.display()))
}

/// The CPI job's folder.
pub fn job_dir() -> PathBuf {
    repo().join("jobs/moltencore_cpi")
}

/// A YAML file as JSON values.
pub fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Nested manifest properties from dotted names.
pub fn nested(flat: &[(&str, Value)]) -> Value {
    let mut root = Map::new();
    for (name, value) in flat {
        let mut node = &mut root;
        let parts: Vec<&str> = name.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            node = node
                .entry(part.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
        }
        node.insert(parts[parts.len() - 1].to_string(), value.clone());
    }
    Value::Object(root)
}

/// Renders `template` of the CPI job with `properties` (a manifest's properties, nested);
/// `Err` carries the harness's stderr.
pub fn render(template: &str, properties: &Value) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("properties.yml");
    std::fs::write(&props, serde_yaml_ng::to_string(properties).unwrap()).unwrap();
    let out = Command::new("ruby")
        .arg(repo().join("tests/bosh/render_template.rb"))
        .arg(job_dir())
        .arg(template)
        .arg(&props)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run ruby ({e}): these tests need Debian's ruby (ci/install-deps installs it)")
        });
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Renders the job's `cpi.json` and parses it.
pub fn render_config(properties: &Value) -> Value {
    let text = render("cpi.json.erb", properties).unwrap_or_else(|e| panic!("render: {e}"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("rendered cpi.json is no JSON ({e}):\n{text}"))
}

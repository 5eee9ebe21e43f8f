//! The binary the BOSH package ships (built by `ci/build-release-binary`, at the path
//! `packages/moltencore_cpi/spec` names below the release's `src/`): an x86_64 ELF that
//! needs no glibc symbol newer than GLIBC_2.31 and no library but glibc's own, so the same
//! file runs on Jammy (2.35) and Noble (2.39) stemcells and on an operator's Linux machine;
//! built from the current sources; and it answers `info`. Fails loudly when it is missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// The newest glibc symbol version the binary may need.
const MAX_GLIBC: (u32, u32, u32) = (2, 31, 0);

/// Libraries a stemcell and any glibc system have.
const GLIBC_LIBRARIES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The artifact, found through the package spec the way `bosh create-release` finds it.
fn artifact() -> PathBuf {
    let spec: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("packages/moltencore_cpi/spec")).unwrap(),
    )
    .unwrap();
    let file = spec["files"][0]
        .as_str()
        .expect("the package names its file");
    let path = repo().join("src").join(file);
    assert!(
        path.is_file(),
        "{} is missing: build it with ci/build-release-binary (ci/test does)",
        path.display()
    );
    path
}

fn readelf(args: &[&str], path: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run readelf ({e}): binutils is needed"));
    assert!(out.status.success(), "readelf {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every glibc version a binary needs, from readelf's version-needs listing.
fn glibc_versions(version_info: &str) -> Vec<(u32, u32, u32)> {
    version_info
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Some(a)), Some(Some(b)), None, None) => Some((a, b, 0)),
                (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) => Some((a, b, c)),
                _ => None,
            }
        })
        .collect()
}

/// Libraries a binary needs (empty for a static one).
fn needed(dynamic: &str) -> Vec<String> {
    dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            let start = l.find('[')? + 1;
            let end = l.rfind(']')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

#[test]
fn versions_and_libraries_are_read_from_readelf() {
    let info = "\
Version needs section '.gnu.version_r' contains 2 entries:
  000000: Version: 1  File: libm.so.6  Cnt: 1
  0x0050:   Name: GLIBC_2.29  Flags: none  Version: 7
  0x0010: Version: 1  File: libc.so.6  Cnt: 3
  0x0060:   Name: GLIBC_2.2.5  Flags: none  Version: 2
  0x0130:   Name: GLIBC_2.34  Flags: none  Version: 13
  0x0140:   Name: GLIBCXX_3.4  Flags: none  Version: 11
  0x0150:   Name: GLIBC_PRIVATE  Flags: none  Version: 12";
    assert_eq!(
        glibc_versions(info),
        vec![(2, 29, 0), (2, 2, 5), (2, 34, 0)]
    );
    assert!(glibc_versions(info).into_iter().max().unwrap() > MAX_GLIBC);
    let dynamic = " 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                   0x000000000000000c (INIT)               0x1000";
    assert_eq!(needed(dynamic), vec!["libc.so.6"]);
}

#[test]
fn the_packaged_binary_runs_on_old_glibc_and_answers_info() {
    let bin = artifact();
    let header = readelf(&["-h"], &bin);
    assert!(header.contains("ELF64"), "{header}");
    assert!(header.contains("X86-64"), "{header}");

    let libraries = needed(&readelf(&["-d", "--wide"], &bin));
    for lib in &libraries {
        assert!(
            GLIBC_LIBRARIES.contains(&lib.as_str()),
            "{} needs {lib}, which is not part of glibc",
            bin.display()
        );
    }
    let versions = glibc_versions(&readelf(&["--version-info", "--wide"], &bin));
    if !libraries.is_empty() {
        assert!(
            !versions.is_empty(),
            "a dynamic binary lists its glibc versions"
        );
    }
    let newest = versions.iter().max().copied().unwrap_or((0, 0, 0));
    assert!(
        newest <= MAX_GLIBC,
        "{} needs GLIBC_{}.{}.{}, newer than {:?}: rebuild with ci/build-release-binary",
        bin.display(),
        newest.0,
        newest.1,
        newest.2,
        MAX_GLIBC
    );

    // Built from the sources as they are now.
    let built = std::fs::metadata(&bin).unwrap().modified().unwrap();
    let newest_source = newest_mtime(&repo().join("src"))
        .max(mtime(&repo().join("Cargo.toml")))
        .max(mtime(&repo().join("Cargo.lock")));
    assert!(
        built >= newest_source,
        "{} is older than the sources: rebuild it with ci/build-release-binary",
        bin.display()
    );

    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"method":"info","arguments":[],"context":{}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["result"]["api_version"], 2, "{response}");
}

#[test]
fn the_check_rejects_a_build_against_this_hosts_newer_glibc() {
    // The debug build links against the host's glibc; on Debian 12 (2.36) it needs 2.34
    // symbols, so the same check must refuse it. Only meaningful where the host's glibc
    // is newer than 2.33.
    let host = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .expect("getconf");
    let host = String::from_utf8_lossy(&host.stdout);
    let host_version = glibc_versions(&host.replace("glibc ", "GLIBC_"));
    assert_eq!(host_version.len(), 1, "getconf said {host}");
    let versions = glibc_versions(&readelf(
        &["--version-info", "--wide"],
        Path::new(env!("CARGO_BIN_EXE_cpi")),
    ));
    assert!(!versions.is_empty());
    if host_version[0] >= (2, 34, 0) {
        assert!(
            versions.iter().max().unwrap() > &MAX_GLIBC,
            "the host build needs only {versions:?}?"
        );
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest modification time of the Rust sources below `dir` (not the artifact).
fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            newest = newest.max(newest_mtime(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            newest = newest.max(mtime(&path));
        }
    }
    newest
}

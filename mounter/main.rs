//! `mc-mounter`: the one process of a node's mounter container, and the command the CPI
//! runs in it (`docker exec`) to attach and detach disks in running VMs. The container
//! sees the node's VM disk tree at `/vms` (shared with the host) and Docker's volumes at
//! `/volumes`; the work is done by `src/disk_mounts.rs`, `src/loop_device.rs` and
//! `src/image_copy.rs`, compiled in here on their own.
//! `build.rs` builds this file statically (the container's image holds nothing else).
//!
//! Every command comes after `--version-is V`: a helper of another version (the CPI was
//! updated, this container was not) answers 2 without doing anything, and the CPI replaces
//! it. Exit codes: 0 done, 1 failed, 2 bad usage or another version, 3 the disk has no
//! volume on this node, 4 the volume holds files besides its image, 5 the disk is in use
//! (`grow`).

#[path = "../src/disk_mounts.rs"]
#[allow(dead_code)]
mod disk_mounts;
#[path = "../src/image_copy.rs"]
#[allow(dead_code)]
mod image_copy;
#[path = "../src/loop_device.rs"]
#[allow(dead_code)]
mod loop_device;

use std::io::ErrorKind;
use std::path::Path;
use std::process::ExitCode;

use disk_mounts::{Bound, DiskMounts, Grown};

const USAGE: &str = "usage: mc-mounter serve | version | --version-is V (attach VM DISK SIZE_MIB | attach-ephemeral VM SIZE_MIB | grow DISK SIZE_MIB | settle VM DISK | unbind VM DISK | list VM | holders DISK | image-size DISK | forget VM | copy-image DISK VOLUME)";
/// This helper's version (the digest of its sources, from build.rs).
const VERSION: &str = env!("MC_MOUNTER_VERSION");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if words == ["version"] {
        println!("{VERSION}");
        return ExitCode::SUCCESS;
    }
    if words == ["serve"] {
        // Only there to be exec'd into; stopped with SIGKILL (its stop signal).
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let words = match words.as_slice() {
        ["--version-is", v, rest @ ..] if *v == VERSION => rest.to_vec(),
        ["--version-is", v, ..] => {
            eprintln!("mc-mounter {VERSION} was asked for version {v}");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let tree = match DiskMounts::new(Path::new("/vms"), Path::new("/volumes")) {
        Ok(t) => t,
        Err(e) => return fail(&format!("the disk tree: {e}"), ErrorKind::Other),
    };
    let outcome = match words.as_slice() {
        ["attach", vm, disk, size] => match size.parse::<u64>() {
            Ok(size) => tree.attach(vm, disk, size).map(|a| {
                vec![
                    match a.node {
                        Bound::Made => "attached",
                        Bound::Already => "already attached",
                    }
                    .to_string(),
                    if a.formatted { "formatted" } else { "blank" }.to_string(),
                ]
                .into_iter()
                .chain(a.folder.then(|| "folder".to_string()))
                .chain(a.grow.then(|| "grow".to_string()))
                .collect()
            }),
            Err(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        ["attach-ephemeral", vm, size] => match size.parse::<u64>() {
            Ok(size) => tree.attach_ephemeral(vm, size).map(|a| {
                vec![if a.formatted { "formatted" } else { "blank" }.to_string()]
            }),
            Err(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        ["grow", disk, size] => match size.parse::<u64>() {
            Ok(size) => tree.grow(disk, size).map(|g| {
                vec![
                    match g {
                        Grown::NoImage => "no image",
                        Grown::Image => "image grown",
                    }
                    .to_string(),
                ]
            }),
            Err(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        ["settle", vm, disk] => tree.settle(vm, disk).map(|()| vec!["settled".to_string()]),
        ["unbind", vm, disk] => tree
            .unbind(vm, disk)
            .map(|was| vec![if was { "unbound" } else { "not bound" }.to_string()]),
        ["list", vm] => tree.disks_of(vm),
        ["holders", disk] => tree.holders(disk),
        ["image-size", disk] => tree
            .image_size(disk)
            .map(|size| vec![size.map_or("none".to_string(), |b| b.to_string())]),
        ["forget", vm] => tree.forget(vm),
        ["copy-image", disk, to] => {
            // A line at least every few seconds: the CPI counts a silent node as gone.
            let mut said = std::time::Instant::now();
            let mut progress = |bytes: u64| {
                if said.elapsed() >= std::time::Duration::from_secs(5) {
                    println!("progress {bytes}");
                    said = std::time::Instant::now();
                }
            };
            tree.copy_image(disk, to, &mut progress)
                .map(|c| vec![format!("copied {} {}", c.size, c.data)])
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), e.kind()),
    }
}

fn fail(message: &str, kind: ErrorKind) -> ExitCode {
    eprintln!("mc-mounter: {message}");
    ExitCode::from(match kind {
        ErrorKind::NotFound => 3,
        ErrorKind::InvalidData => 4,
        ErrorKind::ResourceBusy => 5,
        _ => 1,
    })
}

//! `cpi bosh-config cloud-config|cpi-config`: BOSH configs generated from the cluster in
//! etcd (read in one transaction), printed as YAML for `bosh update-cloud-config` and
//! `bosh update-cpi-config`. The generation itself is in [`crate::boshconfig`].

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::error::{CommandError, Outcome, load_config};
use crate::boshconfig::address_plan::Split;
use crate::boshconfig::cloud_config::{self, DiskTypePreset, Generated, Options, VmTypePreset};
use crate::boshconfig::cpi_config;
use crate::cloud::CloudContext;
use crate::cluster::ClusterView;

/// `cpi bosh-config <kind>`.
#[derive(Debug, Args)]
pub struct BoshConfigCommand {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Debug, Subcommand)]
enum Kind {
    /// One AZ per node (cloud_properties.node), one manual network with one subnet per
    /// node's Flannel subnet, vm_types, disk_types and compilation.
    CloudConfig(CloudConfigArgs),
    /// One CPI entry per node, each pinning its VMs to that node through `placement.node`
    /// (use with `cloud-config --per-node-cpis`).
    CpiConfig,
}

#[derive(Debug, Args)]
struct CloudConfigArgs {
    /// Addresses reserved at the start of each subnet (gateway, director, hand-placed
    /// hosts); the CPI's dynamic pool at the top is always reserved as well.
    #[arg(long, default_value_t = 20)]
    reserved: u32,
    /// Addresses for static IPs, right after the reserved ones.
    #[arg(long = "static", default_value_t = 40)]
    static_ips: u32,
    /// DNS servers of every subnet, comma separated (default: each subnet's gateway).
    #[arg(long, value_delimiter = ',')]
    dns: Vec<Ipv4Addr>,
    /// Name of the manual network.
    #[arg(long, default_value = "default")]
    network_name: String,
    /// Extra vm_type NAME:CPU:RAM_MIB:DISK_MIB (or NAME for no limits); replaces a
    /// preset of the same name (default, small, medium, large, compilation). Repeatable.
    #[arg(long = "vm-type")]
    vm_types: Vec<VmTypePreset>,
    /// Extra disk_type NAME:SIZE_MIB; replaces a preset of the same name (default, 1GB,
    /// 5GB, 10GB, 50GB, 100GB). Repeatable.
    #[arg(long = "disk-type")]
    disk_types: Vec<DiskTypePreset>,
    /// Name each AZ's CPI (moltencore-<node>), for a director with the generated
    /// cpi-config.
    #[arg(long)]
    per_node_cpis: bool,
    /// Compilation workers (default: one per ready node).
    #[arg(long)]
    compilation_workers: Option<u32>,
}

impl CloudConfigArgs {
    fn options(&self) -> Options {
        Options {
            network_name: self.network_name.clone(),
            split: Split {
                reserved: self.reserved,
                static_ips: self.static_ips,
            },
            dns: self.dns.clone(),
            vm_types: cloud_config::with_overrides(VmTypePreset::presets(), &self.vm_types, |t| {
                &t.name
            }),
            disk_types: cloud_config::with_overrides(
                DiskTypePreset::presets(),
                &self.disk_types,
                |t| &t.name,
            ),
            per_node_cpis: self.per_node_cpis,
            compilation_workers: self.compilation_workers,
        }
    }
}

/// Prints the requested config; exit code 0 on success, 1 on any error (on stderr).
pub fn run(config_path: PathBuf, cmd: BoshConfigCommand) -> Outcome {
    let view = read_view(config_path)?;
    for p in &view.problems {
        eprintln!("warning: {p}");
    }
    match &cmd.kind {
        Kind::CloudConfig(args) => print(&cloud_config::generate(&view, &args.options())?)?,
        Kind::CpiConfig => print(&cpi_config::generate(&view)?)?,
    }
    Ok(0)
}

fn read_view(config_path: PathBuf) -> Result<ClusterView, CommandError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    rt.block_on(async {
        let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
        load_config(&ctx, &config_path).await?;
        Ok(ctx.view().await?)
    })
}

fn print<T: Serialize>(g: &Generated<T>) -> Result<(), CommandError> {
    for w in &g.warnings {
        eprintln!("warning: {w}");
    }
    let yaml = serde_yaml_ng::to_string(&g.document).map_err(CommandError::Yaml)?;
    print!("---\n{yaml}");
    Ok(())
}

//! `keyflow ingress-mode`: prints a cluster's ingress mode, or switches a stopped cluster
//! between direct and routed (`keyflow_engine::ingress_mode`; docs/configuration.md,
//! "Co-partitioned ingress").

use clap::Args;
use keyflow_engine::ingress_mode::{self, Mode, Switch};

use crate::tools::BrokerArgs;

#[derive(Debug, Clone, Args)]
pub struct IngressModeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// The cluster (its workers' --cluster).
    #[arg(long, env = "KEYFLOW_CLUSTER")]
    pub cluster: String,

    /// `direct` or `routed`: switch the cluster to it (its workers must be stopped). Without
    /// it: print the cluster's mode.
    pub mode: Option<Mode>,

    /// Replication factor of `<cluster>-meta` when this creates it (-1: the broker's default).
    #[arg(long, env = "KEYFLOW_REPLICATION_FACTOR", default_value = "-1")]
    pub replication_factor: i32,
}

pub async fn run(args: IngressModeArgs) -> anyhow::Result<()> {
    let kafka = args.broker.connect().await?;
    let cluster = &args.cluster;
    let outcome = match args.mode {
        None => ingress_mode::current(&kafka, cluster).await.map(|r| match r {
            Some(r) => println!("cluster {cluster}: ingress {}, recorded {}", r.mode(), r.describe()),
            None => println!(
                "cluster {cluster}: ingress routed (no mode recorded: the cluster was created before keyflow recorded it)"
            ),
        }),
        Some(mode) => {
            let by = format!("keyflow ingress-mode on {}", host());
            ingress_mode::switch(&kafka, cluster, mode, &by, args.replication_factor)
                .await
                .map(|s| print_switch(cluster, mode, s))
        }
    };
    if let Err(e) = outcome {
        // One line, no backtrace (even with RUST_BACKTRACE set): the message says what to do.
        eprintln!("keyflow ingress-mode: {e}");
        std::process::exit(1);
    }
    Ok(())
}

fn print_switch(cluster: &str, mode: Mode, s: Switch) {
    match s {
        Switch::Unchanged(Some(r)) => println!(
            "cluster {cluster} reads its ingress {mode} already (recorded {}); nothing was changed",
            r.describe()
        ),
        Switch::Unchanged(None) => println!(
            "cluster {cluster} reads its ingress {mode} already (no mode recorded: it was created before keyflow recorded it); nothing was changed"
        ),
        Switch::Switched { from, now } if now.mode() == mode => println!(
            "cluster {cluster} switched from {from} to {mode} ingress (generation {} in {}). Its workers follow it when they start; the committed ingress positions carry over (both modes commit them in {cluster}-members)",
            now.proposal.generation,
            ingress_mode::topic(cluster)
        ),
        Switch::Switched { now, .. } => println!(
            "cluster {cluster} reads its ingress {}: another switch was recorded first ({}); run this again to switch to {mode}",
            now.mode(),
            now.describe()
        ),
    }
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_string())
}

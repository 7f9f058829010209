//! `keyflow rescale`: copies a stopped cluster into a new cluster with another partition
//! count (`keyflow_engine::rescale`; docs/operations.md, "Rescaling").

use std::num::NonZeroU32;

use clap::Args;
use keyflow_engine::rescale::{rescale, Plan};

use crate::tools::BrokerArgs;

#[derive(Debug, Clone, Args)]
pub struct RescaleArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// The cluster to copy; its workers must be stopped.
    #[arg(long)]
    pub cluster: String,

    /// The new cluster: its workers then run with `--cluster <this> --partitions <N>`.
    #[arg(long)]
    pub to_cluster: String,

    /// The new cluster's partition count.
    #[arg(long)]
    pub partitions: NonZeroU32,

    /// Replication factor of the topics created for the new cluster (-1: the broker's default).
    #[arg(long, default_value = "-1")]
    pub replication_factor: i32,

    /// Records per transaction: an interrupted rescale resumes after its last committed one.
    #[arg(long, default_value_t = keyflow_engine::rescale::CHUNK)]
    pub records_per_transaction: usize,
}

pub async fn run(args: RescaleArgs) -> anyhow::Result<()> {
    let kafka = args.broker.connect().await?;
    let plan = Plan {
        from: args.cluster,
        to: args.to_cluster,
        partitions: args.partitions.get() as i32,
        replication: args.replication_factor,
        chunk: args.records_per_transaction,
    };
    if let Err(e) = rescale(&kafka, &plan, |line| eprintln!("rescale: {line}")).await {
        // One line, no backtrace (even with RUST_BACKTRACE set): the message says what to do.
        eprintln!("keyflow rescale: {e}");
        std::process::exit(1);
    }
    Ok(())
}

//! The `keyflow` command: runs an engine worker (`run`), the Kafka tools (`produce`,
//! `consume`, `topics`), `top`, the dead-letter tools (`deadletters list|show|replay`),
//! `rescale` and `ingress-mode`.

mod deadletters;
mod ingress_mode;
mod rescale;
mod tools;
mod top;

use clap::{Parser, Subcommand};
use keyflow_engine::config::EngineConfig;
use keyflow_engine::module::Module;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the engine allocates and frees many short-lived
/// buffers (HTTP bodies, envelopes, state) across tokio's worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyflow",
    version,
    about = "A Kafka-driven stateful-functions engine (StateFun-compatible, exactly-once)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an engine worker for the application in module.yaml.
    Run(Box<EngineConfig>),
    /// Send records to a topic: one from the arguments, or `key: value` lines from a file or stdin.
    Produce(tools::ProduceArgs),
    /// Print a topic's records (read_committed unless --read-uncommitted).
    Consume(tools::ConsumeArgs),
    /// List the broker's topics with their partition counts.
    Topics(tools::TopicsArgs),
    /// Watch a cluster live: per-partition throughput, commit latency, lag, delayed messages.
    Top(top::TopArgs),
    /// Dead letters: list them, show one, replay them to their targets once fixed.
    Deadletters(deadletters::DeadLettersArgs),
    /// Copy a stopped cluster into a new cluster with another partition count (state, timers,
    /// unread messages, ingress positions), exactly once; resumable.
    Rescale(rescale::RescaleArgs),
    /// Print a cluster's ingress mode (direct or routed), or switch a stopped cluster to the
    /// other one; its committed ingress positions carry over.
    IngressMode(ingress_mode::IngressModeArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("run") {
        keyflow_engine::config::apply_config_file(&args).map_err(|e| anyhow::anyhow!(e))?;
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking Kafka calls (a partition's opening, a commit) come in bursts: their
        // threads go soon after, instead of lingering 10 s (`keyflow_worker_threads`).
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    match cli.command {
        Command::Run(mut cfg) => rt.block_on(async move {
            cfg.worker_id = Some(cfg.worker_id());
            let module = Module::load(&cfg.module).map_err(|e| anyhow::anyhow!("{e}"))?;
            keyflow_engine::trace::init().map_err(|e| anyhow::anyhow!("{e}"))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            let outcome = keyflow_engine::worker::run(*cfg, module, shutdown).await;
            // The last spans go out before the process ends (a blocking flush).
            let _ = tokio::task::spawn_blocking(keyflow_engine::trace::shutdown).await;
            outcome?;
            Ok(())
        }),
        Command::Produce(args) => rt.block_on(tools::produce(args)),
        Command::Consume(args) => rt.block_on(tools::consume(args)),
        Command::Topics(args) => rt.block_on(tools::topics(args)),
        Command::Top(args) => rt.block_on(top::top(args)),
        Command::Deadletters(args) => rt.block_on(deadletters::run(args)),
        Command::Rescale(args) => rt.block_on(rescale::run(args)),
        Command::IngressMode(args) => rt.block_on(ingress_mode::run(args)),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT; a second signal exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n > 0 {
            eprintln!("second signal: exiting without closing epochs");
            std::process::exit(130);
        }
        tracing::info!("signal received: finishing open epochs (send again to exit at once)");
        shutdown.cancel();
    }
}

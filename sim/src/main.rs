//! `wegweiser-sim`: parses the command line and calls [`wegweiser_sim::run`].

use clap::Parser;
use std::{path::PathBuf, process::ExitCode, time::Duration};
use wegweiser_sim::{Options, Progress, parse_duration};

/// Enrolls N simulated agents through the real HTTPS enrollment path and keeps them reporting
/// on real NATS connections. Allowlist this machine's address in the control plane's
/// `[enrollment] allow`, and raise `ulimit -n` above N.
#[derive(Debug, Parser)]
#[command(name = "wegweiser-sim", version, about)]
struct Cli {
    /// Control plane URL, e.g. https://cp.example.net:8443.
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) of the control plane's HTTPS server (and of nats-server, unless
    /// --nats-ca is given).
    #[arg(long)]
    ca: PathBuf,
    /// CA certificate (PEM) of nats-server.
    #[arg(long)]
    nats_ca: Option<PathBuf>,
    /// Enrollment token (wgt_…) with max_uses ≥ --count.
    #[arg(long, env = "WEGWEISER_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// How many agents.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Enrollments and connects in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Heartbeat interval.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Metrics interval.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    metrics: Duration,
    /// NATS URL (default: the first one of the enrollment answer).
    #[arg(long)]
    nats: Option<String>,
    /// Machine name prefix.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Stop after this long (default: at Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Progress interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress: Duration,
    /// Progress as JSON lines.
    #[arg(long)]
    json: bool,
}

fn show(p: &Progress, json: bool) {
    if json {
        println!("{}", serde_json::to_string(p).unwrap_or_default());
    } else {
        println!(
            "{:>7.1}s enrolled {} ({:.0}/s, {} failed)  connected {} ({} failed, {} disconnects)  reports {} ok {} failed  renewals {}  rss {:.0} MiB  cpu {:.0}%{}",
            p.elapsed_s,
            p.enrolled,
            p.enroll_rate,
            p.enroll_failed,
            p.connected,
            p.connect_failed,
            p.disconnects,
            p.reports_ok,
            p.reports_failed,
            p.renewals,
            p.rss_mib,
            p.cpu_pct,
            p.all_connected_s
                .map(|s| format!("  all connected after {s:.1}s"))
                .unwrap_or_default()
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let c = Cli::parse();
    let json = c.json;
    let opts = Options {
        url: c.url,
        ca: c.ca,
        nats_ca: c.nats_ca,
        token: c.token,
        count: c.count,
        concurrency: c.concurrency,
        heartbeat: c.heartbeat,
        metrics: c.metrics,
        nats: c.nats,
        prefix: c.prefix,
        duration: c.duration,
        progress: c.progress,
        json,
    };
    match wegweiser_sim::run(opts, |p| show(p, json)).await {
        Ok(p) => {
            show(&p, json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wegweiser-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}

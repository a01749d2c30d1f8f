//! `drgw demo`: the appliance on one machine, with embedded defaults and no
//! config. Today it shows what this build does end to end: two appliances
//! on loopback, paired by fingerprint, linked over TLS 1.3 on their
//! replication listeners, refusing an unpaired client, and shutting down
//! cleanly. The tap and staging exist (see `drgw tap`); they join the demo
//! with the target side, when a write can be followed end to end.

mod sites;

use crate::control::{self, Request};
use crate::status::Status;
use anyhow::{bail, Context};
use sites::Site;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the demo; returns an error (exit 1) when a step fails its check.
pub fn run(keep: bool) -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, interrupted.clone())?;
    let workspace = tempfile::Builder::new().prefix("drgw-demo-").tempdir()?;
    println!("drgw demo: working in {}", workspace.path().display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(steps(workspace.path(), &interrupted));
    if keep {
        let kept = workspace.keep();
        println!("kept {} (logs, state, configs)", kept.display());
    }
    result
}

async fn steps(root: &std::path::Path, interrupted: &AtomicBool) -> anyhow::Result<()> {
    step(1, "start two appliances on loopback");
    let mut site_a = Site::start(root, "site-a").await?;
    let mut site_b = Site::start(root, "site-b").await?;
    for site in [&site_a, &site_b] {
        println!(
            "   {} listening on {}, pairing code {}",
            site.name,
            site.address,
            site.fingerprint.pairing_code()
        );
    }
    check_interrupt(interrupted)?;

    step(
        2,
        "pair them: each pins the other's certificate fingerprint",
    );
    site_a.pin(&site_b).await?;
    site_b.pin(&site_a).await?;
    let linked_at = Instant::now();
    let status_a = wait_for_link(&site_a, &site_b.name, interrupted).await?;
    wait_for_link(&site_b, &site_a.name, interrupted).await?;
    let link = &status_a.peers[0].link;
    println!(
        "   link up in {} ms: TLS 1.3, mutual auth, protocol v{}, round trip {}",
        linked_at.elapsed().as_millis(),
        link.protocol_version.unwrap_or(0),
        link.round_trip_us
            .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0)),
    );

    step(
        3,
        "an unpaired client knocks on site-a: refused, with the reason logged",
    );
    let reason = site_a.knock_unpaired(root).await?;
    println!("   site-a refused it: {reason}");
    check_interrupt(interrupted)?;

    step(4, "stop both with SIGTERM: drain and exit 0");
    let took_a = site_a.stop()?;
    let took_b = site_b.stop()?;
    println!(
        "   site-a exited 0 in {} ms, site-b in {} ms",
        took_a.as_millis(),
        took_b.as_millis()
    );

    println!();
    println!("demo passed: pairing, link, refusal and clean shutdown verified");
    println!(
        "(this build has the appliance foundation; the tap, staging and journal are not built yet)"
    );
    Ok(())
}

fn step(number: u32, text: &str) {
    println!("[{number}] {text}");
}

fn check_interrupt(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

async fn wait_for_link(
    site: &Site,
    peer: &str,
    interrupted: &AtomicBool,
) -> anyhow::Result<Status> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupt(interrupted)?;
        let value = control::request(&site.socket, Request::Status).await?;
        let status: Status = serde_json::from_value(value).context("reading the status")?;
        let up = status.peers.iter().any(|p| {
            p.name == peer
                && p.link.state == crate::link::LinkState::Connected
                && p.link.heartbeats_received >= 2
        });
        if up {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "{} has no link to {peer} after 20 s; see {}",
                site.name,
                site.log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

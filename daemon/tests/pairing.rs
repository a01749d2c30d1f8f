//! Two appliances on loopback, paired by fingerprint, link over 9443 and
//! exchange HELLO and heartbeats; each shows the other as connected.

mod common;

use common::{link_state, Daemon};
use std::time::Duration;

#[test]
fn paired_appliances_link_and_exchange_heartbeats() {
    let site_a = Daemon::start("site-a");
    let site_b = Daemon::start("site-b");
    site_a.pin(&site_b);
    site_b.pin(&site_a);
    for (here, there) in [(&site_a, &site_b), (&site_b, &site_a)] {
        here.wait_for(
            "a connected link with heartbeats",
            Duration::from_secs(20),
            |status| {
                let peer = status["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == there.name.as_str());
                peer.is_some_and(|peer| {
                    link_state(peer) == "connected"
                        && peer["link"]["heartbeats_received"].as_u64().unwrap_or(0) >= 3
                        && peer["link"]["round_trip_us"].as_u64().is_some()
                })
            },
        );
        let peer = here.peer(&there.name).unwrap();
        let their_id = there.status()["appliance_id"].as_str().unwrap().to_string();
        assert_eq!(peer["link"]["remote_appliance_id"], their_id.as_str());
        assert_eq!(peer["link"]["remote_name"], there.name.as_str());
        assert_eq!(peer["link"]["protocol_version"], 1);
    }
    // Exactly one side dials.
    let dials_a = site_a.peer("site-b").unwrap()["dials"].as_bool().unwrap();
    let dials_b = site_b.peer("site-a").unwrap()["dials"].as_bool().unwrap();
    assert_ne!(dials_a, dials_b);
}

#[test]
fn link_recovers_after_peer_restart_and_pairing_survives() {
    let site_a = Daemon::start("site-a");
    let mut site_b = Daemon::start("site-b");
    site_a.pin(&site_b);
    site_b.pin(&site_a);
    let connected = |status: &serde_json::Value, name: &str| {
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == name && link_state(p) == "connected")
    };
    site_a.wait_for("link up", Duration::from_secs(20), |s| {
        connected(s, "site-b")
    });
    let fingerprint_before = site_b.fingerprint();
    let (exit, _) = site_b.terminate();
    assert!(exit.success());
    site_a.wait_for("link down", Duration::from_secs(10), |s| {
        !connected(s, "site-b")
    });
    site_b.spawn();
    assert_eq!(
        site_b.fingerprint(),
        fingerprint_before,
        "identity is kept across restarts"
    );
    assert!(
        site_b.peer("site-a").is_some(),
        "pairing is kept across restarts"
    );
    site_a.wait_for("link back up", Duration::from_secs(20), |s| {
        connected(s, "site-b")
    });
    site_b.wait_for("link back up", Duration::from_secs(20), |s| {
        connected(s, "site-a")
    });
}

#[test]
fn unpairing_closes_the_link() {
    let site_a = Daemon::start("site-a");
    let site_b = Daemon::start("site-b");
    site_a.pin(&site_b);
    site_b.pin(&site_a);
    let connected = |status: &serde_json::Value| {
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| link_state(p) == "connected")
    };
    site_b.wait_for("link up", Duration::from_secs(20), connected);
    site_a.cli_ok(&["pair", "remove", "site-b"]);
    assert!(site_a.peer("site-b").is_none());
    site_b.wait_for("link gone", Duration::from_secs(10), |status| {
        !connected(status)
    });
}

#[test]
fn pair_add_rejects_bad_requests() {
    let site_a = Daemon::start("site-a");
    let own = site_a.fingerprint();
    let other = "ab".repeat(32);
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--name",
                "x",
                "--address",
                "127.0.0.1:1",
                "--fingerprint",
                &own,
            ],
            "own fingerprint",
        ),
        (&["--name", "x", "--fingerprint", &other], "needs --address"),
        (
            &[
                "--name",
                "x",
                "--tap",
                "--address",
                "127.0.0.1:1",
                "--fingerprint",
                &other,
            ],
            "no --address",
        ),
        (
            &[
                "--name",
                "bad name",
                "--address",
                "127.0.0.1:1",
                "--fingerprint",
                &other,
            ],
            "must be 1 to 63",
        ),
        (
            &[
                "--name",
                "x",
                "--address",
                "127.0.0.1:1",
                "--fingerprint",
                "abcd",
            ],
            "64 hex digits",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["pair", "add"];
        full.extend_from_slice(args);
        let output = site_a.cli(&full);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{full:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{full:?}: expected {expected:?} in {stderr}"
        );
    }
    site_a.cli_ok(&[
        "pair",
        "add",
        "--name",
        "x",
        "--address",
        "127.0.0.1:1",
        "--fingerprint",
        &other,
    ]);
    let duplicate = site_a.cli(&[
        "pair",
        "add",
        "--name",
        "y",
        "--address",
        "127.0.0.1:1",
        "--fingerprint",
        &other,
    ]);
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already paired as x"));
}

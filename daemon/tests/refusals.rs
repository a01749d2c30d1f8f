//! Only pinned peers get in: each kind of refusal is proven, with the reason
//! logged and shown in `drgw status`.

mod common;

use common::{link_state, runtime, Daemon, TestClient};
use drgw_wire::{self as wire, ErrorCode, Frame, Role};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn refusal_reasons(daemon: &Daemon) -> Vec<String> {
    daemon.status()["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|refusal| refusal["reason"].as_str().unwrap().to_string())
        .collect()
}

fn wait_for_refusal(daemon: &Daemon, needle: &str) {
    daemon.wait_for(needle, Duration::from_secs(10), |status| {
        status["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains(needle))
    });
    daemon.wait_for_log(needle, Duration::from_secs(5));
}

#[test]
fn unpaired_appliance_is_refused_both_ways() {
    let first = Daemon::start("first");
    let second = Daemon::start("second");
    // Only the side that dials pins the other: it is refused by the listener.
    let first_dials = first.fingerprint() < second.fingerprint();
    let (dialer, listener) = if first_dials {
        (&first, &second)
    } else {
        (&second, &first)
    };
    dialer.pin(listener);
    wait_for_refusal(listener, "is not pinned");
    dialer.wait_for("refused link", Duration::from_secs(10), |status| {
        let peer = &status["peers"][0];
        link_state(peer) == "refused"
            && peer["link"]["last_error"]
                .as_str()
                .unwrap()
                .contains("refused our certificate")
    });
}

#[test]
fn unpinned_client_is_refused() {
    let daemon = Daemon::start("site-a");
    let client = TestClient::new();
    let rt = runtime();
    let outcome = rt.block_on(async {
        let mut stream = client
            .connect(&daemon.address(), &daemon.fingerprint())
            .await?;
        // TLS 1.3: the server's verdict on our certificate arrives on the first read.
        wire::write_frame(&mut stream, &client.hello(Role::Appliance))
            .await
            .ok();
        wire::read_frame(&mut stream, wire::BODY_BYTES_DEFAULT)
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))
    });
    assert!(
        !matches!(outcome, Ok(Some(_))),
        "an unpinned client got a frame: {outcome:?}"
    );
    wait_for_refusal(
        &daemon,
        &format!("certificate {} is not pinned", client.fingerprint()),
    );
}

#[test]
fn wrong_server_fingerprint_is_refused_by_the_client() {
    let daemon = Daemon::start("site-a");
    let client = TestClient::new();
    // The highest possible fingerprint: the daemon below always sorts first,
    // so it is the side that dials.
    let wrong = "ff".repeat(32);
    let error = runtime()
        .block_on(client.connect(&daemon.address(), &wrong))
        .unwrap_err();
    let reason = drgw_tls::describe_handshake_error(&error);
    assert!(
        reason.contains("is not the one pinned for this peer"),
        "{reason}"
    );
    // And a daemon dialing a peer pinned with the wrong fingerprint says so.
    let other = Daemon::start("site-b");
    other.cli_ok(&[
        "pair",
        "add",
        "--name",
        "impostor",
        "--address",
        &daemon.address(),
        "--fingerprint",
        &wrong,
    ]);
    assert_eq!(other.peer("impostor").unwrap()["dials"], true);
    other.wait_for("refused link", Duration::from_secs(10), |status| {
        let peer = &status["peers"][0];
        link_state(peer) == "refused"
            && peer["link"]["last_error"]
                .as_str()
                .unwrap()
                .contains("not the one pinned")
    });
    other.wait_for_log("not the one pinned", Duration::from_secs(5));
}

#[test]
fn tls12_client_is_refused() {
    let daemon = Daemon::start("site-a");
    let output = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &daemon.address()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(!output.status.success(), "openssl -tls1_2 connected");
    wait_for_refusal(&daemon, "only version accepted");
    // TLS 1.3 without a client certificate is refused too.
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_3",
            "-ign_eof",
            "-connect",
            &daemon.address(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("certificate required"), "{text}");
    wait_for_refusal(&daemon, "presented no certificate");
}

#[test]
fn plain_tcp_is_refused() {
    let daemon = Daemon::start("site-a");
    let mut tcp = std::net::TcpStream::connect(daemon.address()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP"),
        "a plain TCP client got an answer"
    );
    wait_for_refusal(&daemon, "not a TLS client");
}

#[test]
fn malformed_frame_gets_error_and_other_links_are_unaffected() {
    let site_a = Daemon::start("site-a");
    let site_b = Daemon::start("site-b");
    site_a.pin(&site_b);
    site_b.pin(&site_a);
    let client = TestClient::new();
    site_a.cli_ok(&[
        "pair",
        "add",
        "--name",
        "tap-1",
        "--tap",
        "--fingerprint",
        &client.fingerprint(),
    ]);
    let linked = |status: &serde_json::Value| {
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "site-b" && link_state(p) == "connected")
    };
    site_a.wait_for("link to site-b", Duration::from_secs(20), linked);
    let beats_before = site_a.peer("site-b").unwrap()["link"]["heartbeats_received"]
        .as_u64()
        .unwrap();

    let rt = runtime();
    let (hello_answer, error_frame, after) = rt.block_on(async {
        let mut stream = client
            .connect(&site_a.address(), &site_a.fingerprint())
            .await
            .unwrap();
        wire::write_frame(&mut stream, &client.hello(Role::Tap))
            .await
            .unwrap();
        let answer = wire::read_frame(&mut stream, wire::BODY_BYTES_DEFAULT)
            .await
            .unwrap();
        let mut garbage = b"DRGW".to_vec();
        garbage.extend_from_slice(&[1, 0xee, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        stream.write_all(&garbage).await.unwrap();
        // Heartbeats may come first; the ERROR frame follows, then the close.
        let error = loop {
            match wire::read_frame(&mut stream, wire::BODY_BYTES_DEFAULT).await {
                Ok(Some(Frame::Heartbeat(_))) => continue,
                Ok(Some(Frame::Error(frame))) => break frame,
                other => panic!("expected an ERROR frame, got {other:?}"),
            }
        };
        let after = wire::read_frame(&mut stream, wire::BODY_BYTES_DEFAULT).await;
        (answer, error, after)
    });
    assert!(
        matches!(hello_answer, Some(Frame::Hello(_))),
        "{hello_answer:?}"
    );
    assert_eq!(error_frame.code, ErrorCode::Malformed, "{error_frame:?}");
    assert!(
        !matches!(after, Ok(Some(_))),
        "connection stayed open after ERROR: {after:?}"
    );
    // The appliance link kept beating throughout.
    site_a.wait_for("heartbeats continue", Duration::from_secs(10), |status| {
        let peer = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "site-b")
            .unwrap();
        link_state(peer) == "connected"
            && peer["link"]["heartbeats_received"].as_u64().unwrap() > beats_before + 2
    });
    assert!(
        refusal_reasons(&site_a).is_empty(),
        "a pinned tap is not a refusal"
    );
}

#[test]
fn tap_claiming_to_be_an_appliance_is_turned_away() {
    let daemon = Daemon::start("site-a");
    let client = TestClient::new();
    daemon.cli_ok(&[
        "pair",
        "add",
        "--name",
        "tap-1",
        "--tap",
        "--fingerprint",
        &client.fingerprint(),
    ]);
    let frame = runtime().block_on(async {
        let mut stream = client
            .connect(&daemon.address(), &daemon.fingerprint())
            .await
            .unwrap();
        wire::write_frame(&mut stream, &client.hello(Role::Appliance))
            .await
            .unwrap();
        wire::read_frame(&mut stream, wire::BODY_BYTES_DEFAULT)
            .await
            .unwrap()
    });
    match frame {
        Some(Frame::Error(error)) => {
            assert_eq!(error.code, ErrorCode::NotPaired);
            assert!(
                error.message.contains("paired as a tap"),
                "{}",
                error.message
            );
        }
        other => panic!("expected ERROR NotPaired, got {other:?}"),
    }
}

//! The demo's recovery steps on the target: a test failover at the
//! bookmark (writable copies of every disk, replication going on), then a
//! failover to the bookmark, each disk read over NBD from the target's
//! recovery listener and compared with what the disks held at the bookmark.
//! The failover is cancelled at the end, so replication resumes.

use super::progress::Progress;
use super::sites::Site;
use super::verify::verify_export;
use super::verify::Verdict;
use super::workload::DiskModel;
use crate::control::Request;
use anyhow::Context;

/// What a recovery step needs.
pub struct RecoveryContext<'a> {
    pub progress: &'a Progress,
    /// The target appliance (its control socket: `target.request(...)`).
    pub target: &'a Site,
    pub group: &'a str,
    /// The point to recover, as the control API names it: `bookmark:NAME`.
    pub point: &'a str,
    /// Each disk's expected contents at that point.
    pub expected: &'a [DiskModel],
}

/// How a recovery step ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Every disk's export was read and compared.
    Verified { verdicts: Vec<Verdict> },
}

impl StepOutcome {
    /// Whether every disk read back as expected.
    pub fn passed(&self) -> bool {
        match self {
            StepOutcome::Verified { verdicts } => verdicts.iter().all(|v| v.passed),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            StepOutcome::Verified { verdicts } => {
                let passed = verdicts.iter().filter(|v| v.passed).count();
                format!("{passed} of {} disks verified", verdicts.len())
            }
        }
    }
}

/// Reads every export of an outcome (`exports[].uri`) and compares it
/// with the expected contents of its disk.
async fn verify_exports(
    context: &RecoveryContext<'_>,
    outcome: &serde_json::Value,
) -> anyhow::Result<Vec<Verdict>> {
    let exports = outcome["exports"].as_array().cloned().unwrap_or_default();
    let mut verdicts = Vec::new();
    for model in context.expected {
        let export = exports
            .iter()
            .find(|e| e["disk"] == model.name.as_str())
            .ok_or_else(|| anyhow::anyhow!("no export of {} in {outcome}", model.name))?;
        let uri = export["uri"].as_str().unwrap_or_default();
        let (address, name) = uri
            .strip_prefix("nbd://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| anyhow::anyhow!("unexpected export URI {uri:?}"))?;
        context.progress.detail(&format!("reading {uri}"));
        let verdict = verify_export(address, name, model)
            .await
            .with_context(|| format!("reading {uri}"))?;
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Test failover at the bookmark: writable copies of every disk at the
/// point, verified, then cleaned up (the drill is recorded); replication is
/// not interrupted.
pub async fn test_failover_at_bookmark(
    context: &RecoveryContext<'_>,
) -> anyhow::Result<StepOutcome> {
    let request = Request::TestFailover {
        group: context.group.to_string(),
        point: context.point.to_string(),
    };
    let outcome = context.target.request(request).await?;
    let verdicts = verify_exports(context, &outcome).await;
    let result = match &verdicts {
        Ok(v) if v.iter().all(|v| v.passed) => "passed",
        _ => "failed",
    };
    let cleanup = Request::TestFailoverCleanup {
        group: context.group.to_string(),
        result: Some(result.to_string()),
        note: "drgw demo".to_string(),
    };
    let cleaned = context.target.request(cleanup).await?;
    context
        .progress
        .detail(cleaned["message"].as_str().unwrap_or_default());
    Ok(StepOutcome::Verified {
        verdicts: verdicts?,
    })
}

/// Failover to the bookmark: the disks at the point become the target's
/// writable NBD exports, verified by reading them; then cancelled, so
/// replication resumes (a demo does not commit).
pub async fn failover_to_bookmark(context: &RecoveryContext<'_>) -> anyhow::Result<StepOutcome> {
    let request = Request::Failover {
        group: context.group.to_string(),
        point: context.point.to_string(),
    };
    let outcome = context.target.request(request).await?;
    let verdicts = verify_exports(context, &outcome).await;
    let cancel = Request::FailoverCancel {
        group: context.group.to_string(),
    };
    let cancelled = context.target.request(cancel).await?;
    context
        .progress
        .detail(cancelled["message"].as_str().unwrap_or_default());
    Ok(StepOutcome::Verified {
        verdicts: verdicts?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(passed: bool) -> Verdict {
        Verdict {
            disk: "disk-a".into(),
            read_from: "nbd://127.0.0.1:1/disk-a".into(),
            blocks: 1,
            blocks_written: 1,
            blocks_mismatched: u64::from(!passed),
            first_mismatch_offset: (!passed).then_some(0),
            passed,
        }
    }

    #[test]
    fn a_mismatch_fails_the_step() {
        let good = StepOutcome::Verified {
            verdicts: vec![verdict(true), verdict(true)],
        };
        assert!(good.passed());
        assert_eq!(good.describe(), "2 of 2 disks verified");
        let bad = StepOutcome::Verified {
            verdicts: vec![verdict(true), verdict(false)],
        };
        assert!(!bad.passed());
    }
}

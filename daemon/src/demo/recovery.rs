//! The demo's recovery steps that need the target's recovery exports:
//! test failover at the bookmark and failover to the bookmark. Those
//! control requests are being built (issue 5); until they are merged,
//! each step says so and the demo's verdict rests on `materialize`
//! (`steps::verify_at_bookmark`).
//!
//! To plug them in, replace the body of each function below; the rest of
//! the demo (step numbering, summary, JSON, exit code) already handles a
//! [`StepOutcome::Verified`]. What each step is to do:
//!
//! * test failover: `TestFailover { group, point }` on the target gives a
//!   writable NBD export of every disk at the point, leaving replication
//!   running; read each with [`verify_export`] against `context.expected`;
//!   then `TestFailoverCleanup { group, result }` (the operator's verdict)
//!   removes them.
//! * failover: `Failover { group, point }` on the target gives writable NBD
//!   exports named after the disks on the target's recovery NBD listener;
//!   read each with [`verify_export`] against `context.expected`.
//!
//! [`verify_export`]: super::verify::verify_export

use super::progress::Progress;
use super::sites::Site;
use super::verify::Verdict;
use super::workload::DiskModel;

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
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the recovery steps of issue 5 return it")
    )]
    Verified { verdicts: Vec<Verdict> },
    /// This build cannot do the step yet.
    NotBuilt { reason: String },
}

impl StepOutcome {
    /// Whether the demo may still pass: a step not built yet does not fail it.
    pub fn passed(&self) -> bool {
        match self {
            StepOutcome::Verified { verdicts } => verdicts.iter().all(|v| v.passed),
            StepOutcome::NotBuilt { .. } => true,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            StepOutcome::Verified { verdicts } => {
                let passed = verdicts.iter().filter(|v| v.passed).count();
                format!("{passed} of {} disks verified", verdicts.len())
            }
            StepOutcome::NotBuilt { reason } => format!("not run: {reason}"),
        }
    }
}

/// Test failover at the bookmark: writable copies of every disk at the
/// point, verified, then cleaned up; replication is not interrupted.
pub async fn test_failover_at_bookmark(
    context: &RecoveryContext<'_>,
) -> anyhow::Result<StepOutcome> {
    let reason = "test failover is not in this build yet (issue 5)";
    context.progress.detail(&format!(
        "{reason}: would export {} disk(s) of {} at {} and verify them",
        context.expected.len(),
        context.group,
        context.point
    ));
    let _ = context.target;
    Ok(StepOutcome::NotBuilt {
        reason: reason.into(),
    })
}

/// Failover to the bookmark: the disks at the point become the target's
/// writable NBD exports, verified by reading them.
pub async fn failover_to_bookmark(context: &RecoveryContext<'_>) -> anyhow::Result<StepOutcome> {
    let reason = "failover is not in this build yet (issue 5)";
    context.progress.detail(&format!(
        "{reason}: would serve {} disk(s) of {} at {} on the target's recovery NBD listener and verify them",
        context.expected.len(),
        context.group,
        context.point
    ));
    let _ = context.target;
    Ok(StepOutcome::NotBuilt {
        reason: reason.into(),
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
    fn a_step_not_built_does_not_fail_the_demo_a_mismatch_does() {
        let not_built = StepOutcome::NotBuilt {
            reason: "later".into(),
        };
        assert!(not_built.passed());
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

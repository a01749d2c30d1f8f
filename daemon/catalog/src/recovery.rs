//! Recovery state of target groups (protected, test failover, failed over,
//! committed), with the history of transitions, and the record of test
//! failover drills. Table `recovery`: group key (`PEER.GROUP`) → JSON of
//! [`GroupRecovery`]; table `drills`: `PEER.GROUP/STARTED_MS` (zero-padded)
//! → JSON of [`Drill`].

use super::{Catalog, CatalogError, DRILLS, RECOVERY};
use redb::{ReadableDatabase, ReadableTable};

/// A recovery point: a cut of the group's sequence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryPoint {
    pub sequence: u64,
    /// When the source gateway took it.
    pub unix_ms: u64,
    /// Set for app-consistent bookmarks.
    pub bookmark: Option<String>,
}

/// Where a target group stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RecoveryState {
    /// Replicating; recovery points can be exported.
    Protected,
    /// Writable copies of every disk at `point` are exported; replication goes on.
    TestFailover {
        point: RecoveryPoint,
        since_unix_ms: u64,
    },
    /// The disks at `point` are served writable as the primaries; new
    /// batches are refused; cancel or commit.
    FailedOver {
        point: RecoveryPoint,
        since_unix_ms: u64,
    },
    /// A commit was started and is redone at restart until it is done.
    Committing {
        point: RecoveryPoint,
        since_unix_ms: u64,
    },
    /// The replicas are the primaries; the journal is gone.
    Committed {
        point: RecoveryPoint,
        since_unix_ms: u64,
    },
}

impl RecoveryState {
    pub fn label(&self) -> &'static str {
        match self {
            RecoveryState::Protected => "protected",
            RecoveryState::TestFailover { .. } => "test-failover",
            RecoveryState::FailedOver { .. } => "failed-over",
            RecoveryState::Committing { .. } => "committing",
            RecoveryState::Committed { .. } => "committed",
        }
    }

    pub fn point(&self) -> Option<&RecoveryPoint> {
        match self {
            RecoveryState::Protected => None,
            RecoveryState::TestFailover { point, .. }
            | RecoveryState::FailedOver { point, .. }
            | RecoveryState::Committing { point, .. }
            | RecoveryState::Committed { point, .. } => Some(point),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    pub unix_ms: u64,
    pub from: String,
    pub to: String,
    pub note: String,
}

/// Transitions kept per group (oldest dropped first).
const TRANSITIONS_KEPT: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupRecovery {
    pub group: String,
    pub state: RecoveryState,
    pub transitions: Vec<Transition>,
}

/// One test failover drill, recorded at cleanup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drill {
    pub group: String,
    pub point: RecoveryPoint,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// What the operator reported: "passed", "failed", or "not-reported".
    pub result: String,
    pub note: String,
    /// Bytes written to the drill's disks (thrown away).
    pub written_bytes: u64,
}

impl Catalog {
    pub fn recovery(&self, key: &str) -> Result<Option<GroupRecovery>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(RECOVERY)
            .map_err(|e| self.database_error(e))?;
        let value = table.get(key).map_err(|e| self.database_error(e))?;
        value
            .map(|v| self.decode(&format!("recovery/{key}"), v.value()))
            .transpose()
    }

    /// Every group with a recovery record: `(key, record)`.
    pub fn recoveries(&self) -> Result<Vec<(String, GroupRecovery)>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(RECOVERY)
            .map_err(|e| self.database_error(e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            let key = key.value().to_string();
            let record = self.decode(&format!("recovery/{key}"), value.value())?;
            records.push((key, record));
        }
        Ok(records)
    }

    /// Moves group `key` to `state`, recording the transition, in one
    /// transaction; with `drill`, records it in the same transaction.
    pub fn set_recovery(
        &self,
        key: &str,
        group: &str,
        state: RecoveryState,
        note: &str,
        drill: Option<&Drill>,
    ) -> Result<GroupRecovery, CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        let record = {
            let mut table = transaction
                .open_table(RECOVERY)
                .map_err(|e| self.database_error(e))?;
            let existing = table
                .get(key)
                .map_err(|e| self.database_error(e))?
                .map(|v| self.decode::<GroupRecovery>(&format!("recovery/{key}"), v.value()))
                .transpose()?;
            let mut record = existing.unwrap_or(GroupRecovery {
                group: group.to_string(),
                state: RecoveryState::Protected,
                transitions: Vec::new(),
            });
            record.transitions.push(Transition {
                unix_ms: drgw_io::clock::unix_millis(),
                from: record.state.label().to_string(),
                to: state.label().to_string(),
                note: note.to_string(),
            });
            let excess = record.transitions.len().saturating_sub(TRANSITIONS_KEPT);
            record.transitions.drain(..excess);
            record.group = group.to_string();
            record.state = state;
            let bytes = serde_json::to_vec(&record).expect("serializable");
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.database_error(e))?;
            record
        };
        if let Some(drill) = drill {
            let mut drills = transaction
                .open_table(DRILLS)
                .map_err(|e| self.database_error(e))?;
            let drill_key = format!("{key}/{:020}", drill.started_unix_ms);
            let bytes = serde_json::to_vec(drill).expect("serializable");
            drills
                .insert(drill_key.as_str(), bytes.as_slice())
                .map_err(|e| self.database_error(e))?;
        }
        transaction.commit().map_err(|e| self.database_error(e))?;
        Ok(record)
    }

    /// Drills of group `key`, oldest first.
    pub fn drills(&self, key: &str) -> Result<Vec<Drill>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(DRILLS)
            .map_err(|e| self.database_error(e))?;
        let from = format!("{key}/");
        let to = format!("{key}0");
        let mut drills = Vec::new();
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(|e| self.database_error(e))?
        {
            let (name, value) = entry.map_err(|e| self.database_error(e))?;
            drills.push(self.decode(&format!("drills/{}", name.value()), value.value())?);
        }
        Ok(drills)
    }

    pub(super) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, CatalogError> {
        serde_json::from_slice(bytes).map_err(|error| CatalogError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sequence: u64) -> RecoveryPoint {
        RecoveryPoint {
            sequence,
            unix_ms: 1000 + sequence,
            bookmark: None,
        }
    }

    #[test]
    fn state_transitions_and_drills_persist() {
        let state = tempfile::tempdir().unwrap();
        {
            let catalog = Catalog::open(state.path()).unwrap();
            assert_eq!(catalog.recovery("a.1").unwrap(), None);
            let test = RecoveryState::TestFailover {
                point: point(7),
                since_unix_ms: 5,
            };
            catalog
                .set_recovery("a.1", "g", test, "drill", None)
                .unwrap();
            let drill = Drill {
                group: "g".into(),
                point: point(7),
                started_unix_ms: 5,
                ended_unix_ms: 9,
                result: "passed".into(),
                note: String::new(),
                written_bytes: 4096,
            };
            catalog
                .set_recovery(
                    "a.1",
                    "g",
                    RecoveryState::Protected,
                    "cleanup",
                    Some(&drill),
                )
                .unwrap();
            // Another group's drill is not listed under a.1.
            catalog
                .set_recovery("a.10", "h", RecoveryState::Protected, "x", Some(&drill))
                .unwrap();
        }
        let catalog = Catalog::open(state.path()).unwrap();
        let record = catalog.recovery("a.1").unwrap().unwrap();
        assert_eq!(record.state, RecoveryState::Protected);
        let path: Vec<(&str, &str)> = record
            .transitions
            .iter()
            .map(|t| (t.from.as_str(), t.to.as_str()))
            .collect();
        assert_eq!(
            path,
            [
                ("protected", "test-failover"),
                ("test-failover", "protected")
            ]
        );
        let drills = catalog.drills("a.1").unwrap();
        assert_eq!(drills.len(), 1);
        assert_eq!(drills[0].result, "passed");
        assert_eq!(catalog.recoveries().unwrap().len(), 2);
    }
}

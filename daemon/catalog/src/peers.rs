use super::{Catalog, CatalogError, PEERS};
use drgw_tls::PinnedPeer;
use redb::{ReadableDatabase, ReadableTable};

impl Catalog {
    pub fn peers(&self) -> Result<Vec<PinnedPeer>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(PEERS)
            .map_err(|e| self.database_error(e))?;
        let mut peers = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            peers.push(self.decode_peer(key.value(), value.value())?);
        }
        Ok(peers)
    }

    /// Pins a peer. Names and fingerprints are unique: re-pairing a peer
    /// whose certificate changed is an explicit remove then add. The checks
    /// and the insert share one write transaction, so concurrent adds cannot
    /// both pass the checks.
    pub fn add_peer(&self, peer: &PinnedPeer) -> Result<(), CatalogError> {
        let encoded = serde_json::to_vec(peer).expect("a PinnedPeer always serialises");
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        {
            let mut table = transaction
                .open_table(PEERS)
                .map_err(|e| self.database_error(e))?;
            for entry in table.iter().map_err(|e| self.database_error(e))? {
                let (key, value) = entry.map_err(|e| self.database_error(e))?;
                let existing = self.decode_peer(key.value(), value.value())?;
                check_unique(&existing, peer)?;
            }
            table
                .insert(peer.name.as_str(), encoded.as_slice())
                .map_err(|e| self.database_error(e))?;
        }
        transaction.commit().map_err(|e| self.database_error(e))
    }

    fn decode_peer(&self, name: &str, bytes: &[u8]) -> Result<PinnedPeer, CatalogError> {
        serde_json::from_slice(bytes).map_err(|error| CatalogError::Corrupt {
            path: self.path.clone(),
            key: format!("peers/{name}"),
            reason: error.to_string(),
        })
    }

    pub fn remove_peer(&self, name: &str) -> Result<PinnedPeer, CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        let removed = {
            let mut table = transaction
                .open_table(PEERS)
                .map_err(|e| self.database_error(e))?;
            let removed = table.remove(name).map_err(|e| self.database_error(e))?;
            removed.map(|value| value.value().to_vec())
        };
        let Some(bytes) = removed else {
            return Err(CatalogError::NoSuchPeer { name: name.into() });
        };
        transaction.commit().map_err(|e| self.database_error(e))?;
        self.decode_peer(name, &bytes)
    }
}

fn check_unique(existing: &PinnedPeer, candidate: &PinnedPeer) -> Result<(), CatalogError> {
    if existing.name == candidate.name {
        return Err(CatalogError::DuplicateName {
            name: candidate.name.clone(),
        });
    }
    if existing.fingerprint == candidate.fingerprint {
        return Err(CatalogError::DuplicateFingerprint {
            fingerprint: candidate.fingerprint,
            name: existing.name.clone(),
        });
    }
    Ok(())
}

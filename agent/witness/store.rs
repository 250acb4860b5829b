//! The witness's state dir (`--state`, 0700):
//!
//! | file | what |
//! |---|---|
//! | `witness.crt`, `witness.key` (0600) | its certificate (self-signed; hosts pin it by fingerprint) and key |
//! | `enrollment.json` (0600) | its token's secret hash, the pair CA once a host enrolled, who enrolled |
//! | `nodes/<node>.json` | per node: owner, epoch, whether the partner's replica is current |
//!
//! Every file is written whole (temp, fsync, rename, fsync dir), so a crash leaves the old record
//! or the new one. Compare-and-set reads and writes a node's record under one lock.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};

use super::claims;
use super::enrollment::Enrollment;
use crate::pair::wire::{CasAnswer, CasRequest, NodeClaim};
use crate::pair::witness_client::WITNESS_NAME;
use crate::runtime::{create_dir, remove_stale_temps, write_atomic_mode};

const CERT: &str = "witness.crt";
const KEY: &str = "witness.key";
const ENROLLMENT: &str = "enrollment.json";
const NODES: &str = "nodes";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("making the witness's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// The witness's certificate and key, PEM.
pub struct WitnessIdentity {
    pub certificate: String,
    pub key: String,
}

pub struct WitnessStore {
    dir: PathBuf,
    /// Held across a compare-and-set's read and write.
    records: Mutex<()>,
}

impl WitnessStore {
    pub fn open(dir: &Path) -> Result<WitnessStore, StoreError> {
        for path in [dir.to_path_buf(), dir.join(NODES)] {
            create_dir(&path, 0o700).map_err(|source| StoreError::Io { path, source })?;
        }
        Ok(WitnessStore {
            dir: dir.to_path_buf(),
            records: Mutex::new(()),
        })
    }

    /// The identity, and whether it was made now (the first start).
    pub fn identity(&self) -> Result<(WitnessIdentity, bool), StoreError> {
        if let (Some(certificate), Some(key)) = (self.read(CERT)?, self.read(KEY)?) {
            return Ok((WitnessIdentity { certificate, key }, false));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![WITNESS_NAME.to_string()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, WITNESS_NAME);
        params.distinguished_name = name;
        let identity = WitnessIdentity {
            certificate: params.self_signed(&key)?.pem(),
            key: key.serialize_pem(),
        };
        self.write(KEY, identity.key.as_bytes(), 0o600)?;
        self.write(CERT, identity.certificate.as_bytes(), 0o644)?;
        Ok((identity, true))
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, StoreError> {
        self.read_json(&self.dir.join(ENROLLMENT))
    }

    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<(), StoreError> {
        self.write_json(&self.dir.join(ENROLLMENT), enrollment, 0o600)
    }

    pub fn record(&self, node: &str) -> Result<Option<NodeClaim>, StoreError> {
        self.read_json(&self.node_path(node))
    }

    /// Applies `request` if the node's record is still what it expects (the node's name was
    /// checked by the caller).
    pub fn compare_and_set(&self, request: &CasRequest) -> Result<CasAnswer, StoreError> {
        let _held = self
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.record(&request.node)?;
        let outcome = match claims::decide(current.as_ref(), request) {
            Ok(new) => {
                self.write_json(&self.node_path(&request.node), &new, 0o644)?;
                Ok(new)
            }
            Err(reason) => Err((current, reason)),
        };
        Ok(claims::answer(request, outcome))
    }

    fn node_path(&self, node: &str) -> PathBuf {
        self.dir.join(NODES).join(format!("{node}.json"))
    }

    fn read(&self, name: &str) -> Result<Option<String>, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        remove_stale_temps(path);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Decode {
                path: path.to_path_buf(),
                source,
            })
    }

    fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        write_atomic_mode(&path, data, mode).map_err(|source| StoreError::Io { path, source })
    }

    fn write_json<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
        mode: u32,
    ) -> Result<(), StoreError> {
        let mut text = serde_json::to_vec_pretty(value).expect("witness records serialise");
        text.push(b'\n');
        write_atomic_mode(path, &text, mode).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(owner: &str, epoch: u64) -> NodeClaim {
        NodeClaim {
            owner: owner.into(),
            epoch,
            partner_replica_current: true,
        }
    }

    #[test]
    fn the_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = WitnessStore::open(&dir.path().join("w")).unwrap();
        let (made, new) = store.identity().unwrap();
        assert!(new);
        let (kept, new) = store.identity().unwrap();
        assert!(!new);
        assert_eq!(made.certificate, kept.certificate);
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join("w").join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode(""), mode(KEY)), (0o700, 0o600));
    }

    #[test]
    fn compare_and_set_persists_only_what_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = WitnessStore::open(dir.path()).unwrap();
        let first = CasRequest {
            node: "db1".into(),
            expected: None,
            new: claim("dh1", 1),
        };
        assert!(store.compare_and_set(&first).unwrap().applied);
        let stale = store.compare_and_set(&first).unwrap();
        assert!(!stale.applied);
        assert_eq!(stale.current, Some(claim("dh1", 1)));
        let reopened = WitnessStore::open(dir.path()).unwrap();
        assert_eq!(reopened.record("db1").unwrap(), Some(claim("dh1", 1)));
        let takeover = CasRequest {
            node: "db1".into(),
            expected: Some(claim("dh1", 1)),
            new: claim("dh2", 2),
        };
        assert!(reopened.compare_and_set(&takeover).unwrap().applied);
        assert_eq!(store.record("db1").unwrap(), Some(claim("dh2", 2)));
    }
}

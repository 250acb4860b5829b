//! The pairing on disk, `state_dir/pair/` (0700):
//!
//! | file | who | what |
//! |---|---|---|
//! | `ca.crt` | both | the pair CA's certificate |
//! | `ca.key` (0600) | the inviting host | the CA's key: only it issues certificates |
//! | `host.crt`, `host.key` (0600) | both | this host's certificate (from the pair CA) and key |
//! | `invites.json` (0600) | the inviting host | the open invite's secret hash and expiry, the used ones |
//! | `partner.json` | both | the partner's name and address: written last, it is the pairing |
//! | `witness.json` | both | the pair's witness: address, certificate fingerprint, when added |
//!
//! Every file is written whole (temp, fsync, rename, fsync dir). A host is paired exactly when
//! `partner.json` exists, so a crash in the middle of a join leaves the host unpaired, never
//! half-paired; the next join writes every file again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::invite::Invites;
use super::tls::Identity;
use super::wire::WitnessRecord;
use crate::runtime::write_atomic_mode;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const HOST_CERT: &str = "host.crt";
const HOST_KEY: &str = "host.key";
const INVITES: &str = "invites.json";
const PARTNER: &str = "partner.json";
const WITNESS: &str = "witness.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub name: String,
    /// Its `[pair] listen`.
    pub address: SocketAddr,
    pub paired_unix: u64,
}

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
}

pub struct PairStore {
    dir: PathBuf,
}

impl PairStore {
    pub fn new(state_dir: &Path) -> PairStore {
        PairStore {
            dir: state_dir.join("pair"),
        }
    }

    pub fn partner(&self) -> Result<Option<Partner>, StoreError> {
        self.read_json(PARTNER)
    }

    pub fn witness(&self) -> Result<Option<WitnessRecord>, StoreError> {
        self.read_json(WITNESS)
    }

    pub fn save_witness(&self, witness: &WitnessRecord) -> Result<(), StoreError> {
        self.write_json(WITNESS, witness, 0o644)
    }

    pub fn invites(&self) -> Result<Invites, StoreError> {
        Ok(self.read_json(INVITES)?.unwrap_or_default())
    }

    /// This host's certificate, key and the CA's certificate, when it has them.
    pub fn identity(&self, host: &str) -> Result<Option<Identity>, StoreError> {
        let (Some(ca), Some(certificate), Some(key)) = (
            self.read(CA_CERT)?,
            self.read(HOST_CERT)?,
            self.read(HOST_KEY)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Identity {
            host: host.to_string(),
            ca,
            certificate,
            key,
        }))
    }

    /// The CA's certificate and key (PEM), on the host that made the CA.
    pub fn ca(&self) -> Result<Option<(String, String)>, StoreError> {
        Ok(self.read(CA_CERT)?.zip(self.read(CA_KEY)?))
    }

    /// An invite: the CA's key and this host's identity when they are new, then the invite.
    pub fn save_invite(
        &self,
        new: Option<(&str, &Identity)>,
        invites: &Invites,
    ) -> Result<(), StoreError> {
        self.make_dir()?;
        if let Some((ca_key, identity)) = new {
            self.write(CA_KEY, ca_key.as_bytes(), 0o600)?;
            self.write_identity(identity)?;
        }
        self.write_json(INVITES, invites, 0o600)
    }

    /// The inviting side of a join: the invite used, then the partner.
    pub fn save_accepted(&self, invites: &Invites, partner: &Partner) -> Result<(), StoreError> {
        self.write_json(INVITES, invites, 0o600)?;
        self.write_json(PARTNER, partner, 0o644)
    }

    /// The joining side: the CA, this host's certificate and key, then the partner.
    pub fn save_joined(&self, identity: &Identity, partner: &Partner) -> Result<(), StoreError> {
        self.make_dir()?;
        self.write_identity(identity)?;
        self.write_json(PARTNER, partner, 0o644)
    }

    fn write_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        self.write(CA_CERT, identity.ca.as_bytes(), 0o644)?;
        self.write(HOST_KEY, identity.key.as_bytes(), 0o600)?;
        self.write(HOST_CERT, identity.certificate.as_bytes(), 0o644)
    }

    fn make_dir(&self) -> Result<(), StoreError> {
        crate::runtime::create_dir(&self.dir, 0o700).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    fn read(&self, name: &str) -> Result<Option<String>, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StoreError> {
        crate::runtime::remove_stale_temps(&self.dir.join(name));
        let Some(text) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Decode {
                path: self.dir.join(name),
                source,
            })
    }

    fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        write_atomic_mode(&path, data, mode).map_err(|source| StoreError::Io { path, source })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T, mode: u32) -> Result<(), StoreError> {
        let mut text = serde_json::to_vec_pretty(value).expect("pair records serialise");
        text.push(b'\n');
        self.write(name, &text, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn identity() -> Identity {
        Identity {
            host: "dh2".into(),
            ca: "CA".into(),
            certificate: "CERT".into(),
            key: "KEY".into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_joined_host_is_paired_with_its_keys_private() {
        let state = tempfile::tempdir().unwrap();
        let store = PairStore::new(state.path());
        assert_eq!(store.partner().unwrap(), None);
        assert!(store.identity("dh2").unwrap().is_none());
        let partner = Partner {
            name: "dh1".into(),
            address: "10.0.0.1:7946".parse().unwrap(),
            paired_unix: 5,
        };
        store.save_joined(&identity(), &partner).unwrap();
        assert_eq!(store.partner().unwrap(), Some(partner));
        let loaded = store.identity("dh2").unwrap().unwrap();
        assert_eq!((loaded.ca, loaded.key), ("CA".into(), "KEY".into()));
        let dir = state.path().join("pair");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("host.key")), 0o600);
        assert_eq!(mode(&dir.join("host.crt")), 0o644);
        assert_eq!(store.ca().unwrap(), None, "a joined host holds no CA key");
    }

    #[test]
    fn an_invite_keeps_the_ca_key_and_the_invite_private() {
        let state = tempfile::tempdir().unwrap();
        let store = PairStore::new(state.path());
        let mut invites = Invites::default();
        invites.open(&[1; 32], 10);
        store
            .save_invite(Some(("CAKEY", &identity())), &invites)
            .unwrap();
        assert_eq!(store.invites().unwrap(), invites);
        assert_eq!(store.ca().unwrap(), Some(("CA".into(), "CAKEY".into())));
        let dir = state.path().join("pair");
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("invites.json")), 0o600);
        assert_eq!(store.partner().unwrap(), None, "an invite is not a pairing");
    }

    #[test]
    fn the_witness_is_kept_beside_the_pairing() {
        let state = tempfile::tempdir().unwrap();
        let store = PairStore::new(state.path());
        store
            .save_joined(
                &identity(),
                &Partner {
                    name: "dh1".into(),
                    address: "10.0.0.1:7946".parse().unwrap(),
                    paired_unix: 5,
                },
            )
            .unwrap();
        assert_eq!(store.witness().unwrap(), None);
        let witness = WitnessRecord {
            address: "10.0.0.3:7947".parse().unwrap(),
            fingerprint: "ab".repeat(32),
            added_unix: 9,
        };
        store.save_witness(&witness).unwrap();
        assert_eq!(store.witness().unwrap(), Some(witness));
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_its_file() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join("pair")).unwrap();
        std::fs::write(state.path().join("pair/partner.json"), "{").unwrap();
        let error = PairStore::new(state.path()).partner().unwrap_err();
        assert!(error.to_string().contains("partner.json"), "{error}");
    }
}

//! Which pair a witness serves: the hash of its token's secret, and once a host of a pair
//! presented that secret, the pair's CA. From then on only certificates of that CA are
//! accepted, and the secret adds no other pair. Pure: the store persists what it decides.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::pair::ca::{self, Fingerprint};
use crate::pair::invite::{hex, unhex};
use crate::pair::wire::WitnessEnroll;
use crate::pair::Refusal;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// SHA-256 of the token's secret, hex: the secret itself is only in the printed token.
    pub secret_sha256: String,
    /// The pair CA's certificate (PEM), once a host enrolled.
    pub pair_ca: Option<String>,
    /// The hosts that presented the secret, in order.
    #[serde(default)]
    pub enrolled_by: Vec<String>,
}

impl Enrollment {
    pub fn new(secret: &[u8]) -> Enrollment {
        Enrollment {
            secret_sha256: hex(&Sha256::digest(secret)),
            pair_ca: None,
            enrolled_by: Vec::new(),
        }
    }

    /// The decision on an enrollment: the record to store (`None`: nothing changes, the host's
    /// pair is already this witness's), or the refusal and why.
    pub fn enroll(&self, request: &WitnessEnroll) -> Result<Option<Enrollment>, (Refusal, String)> {
        let presented = hex(&Sha256::digest(unhex(&request.secret).unwrap_or_default()));
        if !bool::from(presented.as_bytes().ct_eq(self.secret_sha256.as_bytes())) {
            return Err((
                Refusal::WrongSecret,
                "no token of this witness has this secret".into(),
            ));
        }
        ca::chains_to(&request.ca, &request.certificate, &request.host).map_err(|error| {
            (
                Refusal::Malformed,
                format!(
                    "its certificate does not hold for {}: {error}",
                    request.host
                ),
            )
        })?;
        let fingerprint = |pem: &str| ca::der_of(pem).map(|der| Fingerprint::of(&der)).ok();
        match &self.pair_ca {
            Some(ours) if fingerprint(ours) == fingerprint(&request.ca) => {
                if self.enrolled_by.contains(&request.host) {
                    return Ok(None);
                }
                let mut next = self.clone();
                next.enrolled_by.push(request.host.clone());
                Ok(Some(next))
            }
            Some(_) => Err((
                Refusal::TokenUsed,
                "this witness serves another pair (its token was used with another CA)".into(),
            )),
            None => {
                let mut next = self.clone();
                next.pair_ca = Some(request.ca.clone());
                next.enrolled_by.push(request.host.clone());
                Ok(Some(next))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::ca::PairCa;

    fn request(pair_ca: &PairCa, host: &str, secret: &[u8]) -> WitnessEnroll {
        let key = rcgen::KeyPair::generate().unwrap();
        WitnessEnroll {
            host: host.into(),
            secret: hex(secret),
            ca: pair_ca.cert_pem().into(),
            certificate: pair_ca.issue(host, &key).unwrap(),
        }
    }

    #[test]
    fn the_secret_adds_one_pair_and_both_its_hosts() {
        let pair = PairCa::generate("dh1").unwrap();
        let empty = Enrollment::new(&[7; 32]);
        let first = empty
            .enroll(&request(&pair, "dh1", &[7; 32]))
            .unwrap()
            .unwrap();
        assert_eq!(first.pair_ca.as_deref(), Some(pair.cert_pem()));
        let second = first
            .enroll(&request(&pair, "dh2", &[7; 32]))
            .unwrap()
            .unwrap();
        assert_eq!(second.enrolled_by, ["dh1", "dh2"]);
        assert_eq!(second.enroll(&request(&pair, "dh2", &[7; 32])), Ok(None));
        let stranger = PairCa::generate("dh9").unwrap();
        let refused = second
            .enroll(&request(&stranger, "dh9", &[7; 32]))
            .unwrap_err();
        assert_eq!(refused.0, Refusal::TokenUsed);
    }

    #[test]
    fn a_wrong_secret_or_a_certificate_of_another_ca_is_refused() {
        let pair = PairCa::generate("dh1").unwrap();
        let empty = Enrollment::new(&[7; 32]);
        let wrong = empty.enroll(&request(&pair, "dh1", &[8; 32])).unwrap_err();
        assert_eq!(wrong.0, Refusal::WrongSecret);
        let mut mixed = request(&pair, "dh1", &[7; 32]);
        mixed.ca = PairCa::generate("dh1").unwrap().cert_pem().into();
        assert_eq!(empty.enroll(&mixed).unwrap_err().0, Refusal::Malformed);
    }
}

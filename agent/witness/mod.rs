//! `magestack-agent witness --listen ADDR --state DIR`: the third party of a pair, on a third
//! machine. At its first start it makes its identity (a self-signed certificate: hosts pin it by
//! the fingerprint in its token) and a one-time secret, and prints its token ([`crate::pair::witness_token`]) alone
//! on one line of stdout. `pair witness TOKEN` on either host of a pair enrolls that pair's CA
//! ([`enrollment`]); from then on the pair's hosts connect with their pair certificates, and
//! the witness holds a lease for each ([`crate::pair::lease`]), answers whether a host's lease
//! ran out here, and keeps per node, by compare-and-set, who owns it at which epoch
//! ([`claims`], [`store`]). After a restart it declares nobody dead until a full lease passed.

pub mod claims;
pub mod enrollment;
pub mod server;
pub mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enrollment::Enrollment;
use server::Witness;
use store::WitnessStore;

use crate::pair::ca::{der_of, Fingerprint};
use crate::pair::witness_token::{WitnessToken, SECRET_LEN};

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("--listen {0}: name the address the pair's hosts reach the witness at (it goes into the token), not an unspecified one")]
    Unspecified(SocketAddr),
    #[error("the state dir: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Server(#[from] server::ServerError),
    #[error("the witness's certificate: {0}")]
    Certificate(#[from] crate::pair::ca::CaError),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no random numbers from the system")]
    Random,
}

/// Runs the witness until SIGTERM or SIGINT.
pub fn run(listen: SocketAddr, state: &Path, lease: Duration) -> Result<(), WitnessError> {
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return Err(WitnessError::Unspecified(listen));
    }
    let store = WitnessStore::open(state)?;
    let (identity, _) = store.identity()?;
    let certificate = Fingerprint::of(&der_of(&identity.certificate)?);
    let (enrollment, token) = match store.enrollment()? {
        Some(enrollment) => (enrollment, None),
        None => {
            let mut secret = [0u8; SECRET_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| WitnessError::Random)?;
            let enrollment = Enrollment::new(&secret);
            store.save_enrollment(&enrollment)?;
            let token = WitnessToken {
                address: listen,
                certificate,
                secret,
            };
            (enrollment, Some(token))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| WitnessError::Listen { listen, source })?;
        match (&token, &enrollment.pair_ca) {
            (Some(token), _) => {
                tracing::info!(%listen, certificate = %certificate, "witness: first start; its token is on stdout (give it to `pair witness` on a host of the pair)");
                let mut stdout = std::io::stdout();
                writeln!(stdout, "{}", token.encode())?;
                stdout.flush()?;
            }
            (None, Some(_)) => {
                tracing::info!(%listen, by = ?enrollment.enrolled_by, "witness: serving its pair; nobody is declared dead for the first {lease:?}")
            }
            (None, None) => tracing::info!(%listen, "witness: waiting for its pair to enroll with the token printed at its first start"),
        }
        let witness = Arc::new(Witness::new(store, identity, enrollment, lease)?);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = server::serve(witness, listener) => {}
            _ = terminate.recv() => tracing::info!("witness: SIGTERM, stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("witness: SIGINT, stopping"),
        }
        Ok(())
    })
}

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;

fn claim(owner: &str, epoch: u64) -> Claim {
    Claim {
        owner: owner.to_string(),
        epoch: Epoch(epoch),
    }
}

fn claims(entries: &[(&str, &str, u64)]) -> BTreeMap<String, Claim> {
    entries
        .iter()
        .map(|(node, owner, epoch)| (node.to_string(), claim(owner, *epoch)))
        .collect()
}

/// dh1 after boot, confirmed by the witness: web1 is its own, db1 dh2's.
fn confirmed_dh1() -> Ownership {
    let known = claims(&[("web1", "dh1", 1), ("db1", "dh2", 1)]);
    let mut host = Ownership::paired("dh1", known.clone());
    host.confirm(Peer::Witness, &known);
    host
}

#[test]
fn a_standalone_host_owns_every_node_always() {
    let host = Ownership::standalone("dh1");
    assert_eq!(host.may_run("web1"), Ok(()));
    assert_eq!(host.takeover("web1"), Err(TakeoverRefused::Standalone));
}

#[test]
fn a_paired_host_runs_nothing_until_a_peer_confirms_its_epochs() {
    let known = claims(&[("web1", "dh1", 3)]);
    let mut host = Ownership::paired("dh1", known.clone());
    host.set_reachable(Peer::Partner, true);
    assert_eq!(host.may_run("web1"), Err(NotRunnable::Unconfirmed));
    let (fence, conflicts) = host.confirm(Peer::Partner, &known);
    assert!(fence.is_empty() && conflicts.is_empty());
    assert_eq!(host.may_run("web1"), Ok(()));
    assert_eq!(host.may_run("db1"), Err(NotRunnable::Unclaimed));
}

#[test]
fn a_confirmation_with_a_higher_epoch_keeps_the_node_down() {
    let mut host = Ownership::paired("dh1", claims(&[("web1", "dh1", 3)]));
    let (fence, _) = host.confirm(Peer::Witness, &claims(&[("web1", "dh2", 4)]));
    // It never ran since boot: nothing to fence, and it stays down.
    assert!(fence.is_empty());
    let owned = NotRunnable::Owned {
        owner: "dh2".into(),
        epoch: Epoch(4),
    };
    assert_eq!(host.may_run("web1"), Err(owned));
}

#[test]
fn without_the_partner_and_the_witness_nothing_runs() {
    let mut host = confirmed_dh1();
    host.set_reachable(Peer::Partner, true);
    host.set_reachable(Peer::Witness, false);
    assert_eq!(host.may_run("web1"), Ok(()));
    host.set_reachable(Peer::Partner, false);
    assert_eq!(host.may_run("web1"), Err(NotRunnable::NoQuorum));
}

#[test]
fn a_higher_epoch_for_a_node_this_host_runs_fences_it() {
    let mut host = confirmed_dh1();
    assert_eq!(host.learn("web1", &claim("dh2", 2)), Ok(Learned::Fence));
    assert!(host.may_run("web1").is_err());
    assert_eq!(host.learn("db1", &claim("dh2", 5)), Ok(Learned::Newer));
    assert_eq!(host.claims()["db1"], claim("dh2", 5));
}

#[test]
fn older_known_and_conflicting_claims_change_nothing() {
    let mut host = confirmed_dh1();
    host.learn("web1", &claim("dh1", 4)).unwrap();
    assert_eq!(host.learn("web1", &claim("dh2", 3)), Ok(Learned::Nothing));
    assert_eq!(host.learn("web1", &claim("dh1", 4)), Ok(Learned::Nothing));
    let conflict = host.learn("web1", &claim("dh2", 4)).unwrap_err();
    assert_eq!(
        conflict.to_string(),
        "web1: epoch 4 claimed by both dh1 and dh2"
    );
    assert_eq!(host.claims()["web1"], claim("dh1", 4));
    assert_eq!(host.may_run("web1"), Ok(()));
}

#[test]
fn a_takeover_needs_the_witness_and_a_node_of_the_partner() {
    let mut host = Ownership::paired("dh1", claims(&[("db1", "dh2", 1)]));
    assert_eq!(host.takeover("db1"), Err(TakeoverRefused::Unconfirmed));
    host.confirm(Peer::Partner, &BTreeMap::new());
    assert_eq!(host.takeover("db1"), Err(TakeoverRefused::NoWitness));
    host.set_reachable(Peer::Witness, true);
    host.learn("web1", &claim("dh1", 1)).unwrap();
    assert!(matches!(
        host.takeover("web1"),
        Err(TakeoverRefused::Owned { .. })
    ));
    assert_eq!(
        host.takeover("lb1"),
        Err(TakeoverRefused::Unclaimed("lb1".into()))
    );
    let cas = host.takeover("db1").unwrap();
    assert_eq!(cas.expected, Some(claim("dh2", 1)));
    assert_eq!(cas.proposed, claim("dh1", 2));
    // Asking is not owning.
    assert!(host.may_run("db1").is_err());
}

#[test]
fn of_two_racing_compare_and_sets_the_witness_accepts_one_and_teaches_the_other() {
    let mut witness = Witness::new(claims(&[("db1", "dh2", 1)]));
    let mut dh1 = Ownership::paired("dh1", claims(&[("db1", "dh2", 1)]));
    dh1.confirm(Peer::Witness, witness.claims());
    let cas = dh1.takeover("db1").unwrap();
    let rival = Cas {
        proposed: claim("dh3", 2),
        ..cas.clone()
    };
    let first = witness.compare_and_set(&rival);
    assert_eq!(
        first,
        CasOutcome::Accepted {
            node: "db1".into(),
            claim: claim("dh3", 2)
        }
    );
    let second = witness.compare_and_set(&cas);
    assert_eq!(
        second,
        CasOutcome::Refused {
            node: "db1".into(),
            current: Some(claim("dh3", 2))
        }
    );
    assert_eq!(dh1.cas_answered(&second), Ok(Learned::Newer));
    assert_eq!(dh1.claims()["db1"], claim("dh3", 2));
}

#[test]
fn the_witness_refuses_a_skipped_epoch_and_registers_a_new_node_once() {
    let mut witness = Witness::default();
    let register = |owner: &str| Cas {
        node: "lb1".into(),
        expected: None,
        proposed: claim(owner, 1),
    };
    assert!(matches!(
        witness.compare_and_set(&register("dh1")),
        CasOutcome::Accepted { .. }
    ));
    assert!(matches!(
        witness.compare_and_set(&register("dh2")),
        CasOutcome::Refused { .. }
    ));
    let skip = Cas {
        node: "lb1".into(),
        expected: Some(claim("dh1", 1)),
        proposed: claim("dh2", 3),
    };
    assert!(matches!(
        witness.compare_and_set(&skip),
        CasOutcome::Refused { .. }
    ));
    assert_eq!(witness.claims()["lb1"], claim("dh1", 1));
}

// The model: two hosts and the witness exchanging messages over three links that partitions
// cut, with messages delayed, reordered, lost and replayed, and hosts and the witness restarted.

const HOSTS: [&str; 2] = ["dh1", "dh2"];
const NODES: [&str; 3] = ["web1", "db1", "lb1"];

/// The links: dh1-dh2, dh1-witness, dh2-witness.
fn witness_link(host: usize) -> usize {
    1 + host
}
const PARTNER_LINK: usize = 0;

#[derive(Debug, Clone)]
enum Message {
    Cas {
        from: usize,
        cas: Cas,
    },
    Sync {
        from: usize,
    },
    CasReply {
        to: usize,
        outcome: CasOutcome,
    },
    Claims {
        to: usize,
        from: Peer,
        claims: BTreeMap<String, Claim>,
    },
}

impl Message {
    fn link(&self) -> usize {
        match self {
            Message::Cas { from, .. } | Message::Sync { from } => witness_link(*from),
            Message::CasReply { to, .. } => witness_link(*to),
            Message::Claims { to, from, .. } => match from {
                Peer::Witness => witness_link(*to),
                Peer::Partner => PARTNER_LINK,
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Cut(usize, bool),
    RestartHost(usize),
    RestartWitness,
    Deliver {
        pick: usize,
        replay: bool,
    },
    Gossip(usize),
    Sync(usize),
    /// The host's leases catch up with the links.
    Reach(usize),
    Takeover(usize, usize),
    Register(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3, any::<bool>()).prop_map(|(link, cut)| Op::Cut(link, cut)),
        1 => (0usize..2).prop_map(Op::RestartHost),
        1 => Just(Op::RestartWitness),
        8 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, replay)| Op::Deliver { pick, replay }),
        2 => (0usize..2).prop_map(Op::Gossip),
        2 => (0usize..2).prop_map(Op::Sync),
        3 => (0usize..2).prop_map(Op::Reach),
        3 => (0usize..2, 0usize..3).prop_map(|(h, n)| Op::Takeover(h, n)),
        1 => (0usize..2, 0usize..3).prop_map(|(h, n)| Op::Register(h, n)),
    ]
}

struct Model {
    hosts: Vec<Ownership>,
    persisted: Vec<BTreeMap<String, Claim>>,
    witness: Witness,
    cut: [bool; 3],
    in_flight: Vec<Message>,
    /// Every claim the witness ever held, by node.
    accepted: HashSet<(String, Claim)>,
    /// The highest epoch each party (hosts, then the witness) has known per node.
    highest: BTreeMap<(usize, String), Epoch>,
}

impl Model {
    fn new() -> Model {
        let initial = claims(&[("web1", "dh1", 1), ("db1", "dh2", 1)]);
        Model {
            hosts: HOSTS
                .iter()
                .map(|host| Ownership::paired(host, initial.clone()))
                .collect(),
            persisted: vec![initial.clone(); 2],
            witness: Witness::new(initial.clone()),
            cut: [false; 3],
            in_flight: Vec::new(),
            accepted: initial.into_iter().collect(),
            highest: BTreeMap::new(),
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Cut(link, cut) => self.cut[link] = cut,
            Op::RestartHost(host) => {
                self.hosts[host] = Ownership::paired(HOSTS[host], self.persisted[host].clone())
            }
            Op::RestartWitness => self.witness = Witness::new(self.witness.claims().clone()),
            Op::Deliver { pick, replay } => {
                if self.in_flight.is_empty() {
                    return Ok(());
                }
                let index = pick % self.in_flight.len();
                let message = if replay {
                    self.in_flight[index].clone()
                } else {
                    self.in_flight.remove(index)
                };
                if !self.cut[message.link()] {
                    self.deliver(message)?;
                }
            }
            Op::Gossip(host) => self.in_flight.push(Message::Claims {
                to: 1 - host,
                from: Peer::Partner,
                claims: self.hosts[host].claims().clone(),
            }),
            Op::Sync(host) => self.in_flight.push(Message::Sync { from: host }),
            Op::Reach(host) => {
                let ownership = &mut self.hosts[host];
                ownership.set_reachable(Peer::Partner, !self.cut[PARTNER_LINK]);
                ownership.set_reachable(Peer::Witness, !self.cut[witness_link(host)]);
            }
            Op::Takeover(host, node) => {
                if let Ok(cas) = self.hosts[host].takeover(NODES[node]) {
                    self.in_flight.push(Message::Cas { from: host, cas });
                }
            }
            Op::Register(host, node) => {
                if !self.hosts[host].claims().contains_key(NODES[node]) {
                    let cas = Cas {
                        node: NODES[node].to_string(),
                        expected: None,
                        proposed: claim(HOSTS[host], 1),
                    };
                    self.in_flight.push(Message::Cas { from: host, cas });
                }
            }
        }
        self.check()
    }

    fn deliver(&mut self, message: Message) -> Result<(), TestCaseError> {
        match message {
            Message::Cas { from, cas } => {
                let outcome = self.witness.compare_and_set(&cas);
                if let CasOutcome::Accepted { node, claim } = &outcome {
                    self.accepted.insert((node.clone(), claim.clone()));
                }
                self.in_flight.push(Message::CasReply { to: from, outcome });
            }
            Message::Sync { from } => self.in_flight.push(Message::Claims {
                to: from,
                from: Peer::Witness,
                claims: self.witness.claims().clone(),
            }),
            Message::CasReply { to, outcome } => {
                let learned = self.hosts[to].cas_answered(&outcome);
                prop_assert!(learned.is_ok(), "{:?}", learned);
                self.persisted[to] = self.hosts[to].claims().clone();
            }
            Message::Claims { to, from, claims } => {
                let (_, conflicts) = self.hosts[to].confirm(from, &claims);
                prop_assert!(conflicts.is_empty(), "{:?}", conflicts);
                self.persisted[to] = self.hosts[to].claims().clone();
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let parties: Vec<&BTreeMap<String, Claim>> = self
            .hosts
            .iter()
            .map(Ownership::claims)
            .chain([self.witness.claims()])
            .collect();
        for node in NODES {
            // Never two hosts that both may run one node at one epoch.
            let runners: Vec<Epoch> = self
                .hosts
                .iter()
                .filter(|host| host.may_run(node).is_ok())
                .map(|host| host.claims()[node].epoch)
                .collect();
            prop_assert!(
                runners.len() < 2 || runners[0] != runners[1],
                "both hosts may run {} at epoch {:?}",
                node,
                runners
            );
            for (party, known) in parties.iter().enumerate() {
                let Some(claim) = known.get(node) else {
                    continue;
                };
                // No claim but one the witness accepted: no takeover without its CAS.
                prop_assert!(
                    self.accepted.contains(&(node.to_string(), claim.clone())),
                    "party {} holds {:?} for {}, never accepted",
                    party,
                    claim,
                    node
                );
                // Epochs never go down, restarts included.
                let highest = self
                    .highest
                    .entry((party, node.to_string()))
                    .or_insert(claim.epoch);
                prop_assert!(
                    claim.epoch >= *highest,
                    "{} went down at party {}",
                    node,
                    party
                );
                *highest = claim.epoch;
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_interleaving_gives_two_hosts_one_node_at_one_epoch(ops in prop::collection::vec(op(), 1..120)) {
        let mut model = Model::new();
        for op in ops {
            model.apply(op)?;
        }
    }
}

//! Partitions and load against fencing: two paired hosts, each running a node, with a witness,
//! each machine in a network namespace of its own and each host's state dir on a btrfs of its
//! own. A host that keeps one peer (the partner or the witness) keeps quorum: cutting a from b,
//! a from the witness, the witness down or restarted, or a seeded schedule of such faults fence
//! nothing and move nothing, as an observer sampling every few milliseconds sees from outside.
//! A host cut from both peers fences its node within the lease, and its partner does not. Both
//! cores busy for a minute with the default timings: no fence and no lease expiry.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::load::BusyLoops;
use common::observer::{FenceObserver, Observed, WatchedNode};
use common::pair::{pair_status, PairHosts};
use common::partition::{Machine, Partition};
use common::schedule::{Fault, FaultSchedule};
use common::witness::TestWitness;
use common::{sleeper_nodes, wait_for, TestHost};

/// The default `[pair] lease`: a fence must be complete within it.
const LEASE: Duration = Duration::from_millis(500);
/// How often the observer samples every node.
const SAMPLE_EVERY: Duration = Duration::from_millis(3);
/// A peer holds a host's lease for at least this long once it answers heartbeats again (a
/// fresh answer leaves it the lease less a round trip).
const HELD_AGAIN_MS: u64 = 300;

/// The tests of this file one at a time: the load test must not slow the others' hosts, nor
/// they its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pair with a witness, node `na` on a and `nb` on b, and the partition tables; dropped
/// partition first, then the witness, then the hosts and their filesystems.
struct Pair {
    partition: Partition,
    witness: TestWitness,
    hosts: PairHosts,
}

impl Pair {
    fn start(tag: &str) -> Pair {
        let hosts = PairHosts::start_on_btrfs(
            &format!("{tag}a"),
            &format!("{tag}b"),
            &sleeper_nodes(&["na"]),
            "",
        );
        for host in [&hosts.a, &hosts.b] {
            assert!(common::btrfs::is_btrfs(&host.state_dir()));
        }
        hosts.pair();
        hosts.a.wait_node_state("na", "running");
        let mut witness = TestWitness::new(&hosts);
        let token = witness.start();
        hosts.a.cli(&["pair", "witness", &token]);
        hosts.add_sleepers(1, &["nb"]);
        let partition = Partition::new(&hosts, &witness);
        let pair = Pair {
            partition,
            witness,
            hosts,
        };
        pair.wait_held_everywhere();
        for host in [&pair.hosts.a, &pair.hosts.b] {
            wait_for("quorum", Duration::from_secs(10), || {
                host.status()["fencing"]["quorum"] == true
            });
        }
        pair
    }

    /// The node of each host, probed from outside.
    fn watched(&self) -> Vec<WatchedNode> {
        vec![
            WatchedNode::new(&self.hosts.a, "na"),
            WatchedNode::new(&self.hosts.b, "nb"),
        ]
    }

    /// Waits until both peers of each host hold its lease again (a fresh heartbeat answered).
    fn wait_held_everywhere(&self) {
        for host in [&self.hosts.a, &self.hosts.b] {
            wait_for(
                &format!("{}'s lease held by both peers", host.name),
                Duration::from_secs(20),
                || {
                    let status = pair_status(host);
                    ["partner", "witness"].iter().all(|peer| {
                        status["leases"][peer]["held_ms"]
                            .as_u64()
                            .is_some_and(|held| held >= HELD_AGAIN_MS)
                    })
                },
            );
        }
    }

    /// Holds `fault` for `hold`, checks that it cut what it should (the lease the fault
    /// silences runs out on the host that holds it), and heals it.
    fn play(&mut self, fault: Fault, hold: Duration) {
        let silenced = match fault {
            Fault::Cut(x, y) => {
                self.partition.cut(x, y);
                lease_of(x, y)
            }
            Fault::WitnessIsolated => {
                self.partition.cut(Machine::A, Machine::Witness);
                self.partition.cut(Machine::B, Machine::Witness);
                lease_of(Machine::A, Machine::Witness)
            }
            Fault::WitnessDown => {
                self.witness.kill(libc::SIGKILL);
                lease_of(Machine::A, Machine::Witness)
            }
        };
        let until = Instant::now() + hold;
        let mut expired = false;
        while Instant::now() < until {
            let (n, peer) = silenced;
            expired |= pair_status(self.hosts.host(n))["leases"][peer]["alive"] == false;
            std::thread::sleep(Duration::from_millis(50));
        }
        match fault {
            Fault::WitnessDown => self.witness.restart(),
            _ => self.partition.heal_all(),
        }
        // A hold shorter than a lease may end before the lease does.
        assert!(
            expired || hold < LEASE + Duration::from_millis(300),
            "{fault:?} held {hold:?}: the lease it silences never ran out"
        );
    }

    /// Per node: its host's view (state, pid, restarts, fenced), and each host's fence count.
    fn nodes_seen(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for (host, node) in [(&self.hosts.a, "na"), (&self.hosts.b, "nb")] {
            let status = host.status();
            let node = host.node(node);
            seen.push(format!(
                "{}/{}: {} pid {} restarts {} fenced {}; fences {}",
                host.name,
                node["name"],
                node["state"],
                node["pid"],
                node["restarts"],
                node["fenced"],
                status["fencing"]["fences"]
            ));
        }
        seen
    }
}

/// Which host and which of its leases a cut between `x` and `y` silences.
fn lease_of(x: Machine, y: Machine) -> (usize, &'static str) {
    match (x.min(y), x.max(y)) {
        (Machine::A, Machine::B) => (0, "partner"),
        (Machine::A, Machine::Witness) => (0, "witness"),
        _ => (1, "witness"),
    }
}

fn assert_never_fenced(observed: &Observed, what: &str) {
    assert!(
        observed.fences().is_empty(),
        "{what}: fenced {:?}",
        observed.fences()
    );
    eprintln!(
        "{what}: {} rounds of sampling, the longest gap {:?}, no fence",
        observed.rounds, observed.longest_gap
    );
}

fn lease_expiries(host: &TestHost) -> u64 {
    let status = pair_status(host);
    ["partner", "witness"]
        .iter()
        .map(|peer| status["leases"][peer]["expiries"].as_u64().unwrap())
        .sum()
}

#[test]
fn partitions_that_leave_each_host_a_peer_never_fence_nor_move_a_node() {
    let _serial = serial();
    let mut pair = Pair::start("pq");
    let before = pair.nodes_seen();
    let observer = FenceObserver::start(pair.watched(), SAMPLE_EVERY, Duration::from_secs(120));

    let hold = 4 * LEASE;
    pair.play(Fault::Cut(Machine::A, Machine::B), hold);
    pair.wait_held_everywhere();
    pair.play(Fault::Cut(Machine::A, Machine::Witness), hold);
    pair.wait_held_everywhere();
    pair.play(Fault::WitnessDown, hold);
    // Restarted, the witness serves again: watched for a few leases more.
    pair.wait_held_everywhere();
    std::thread::sleep(hold);

    assert_never_fenced(&observer.finish(), "a|b, a|witness, witness down and back");
    assert_eq!(
        pair.nodes_seen(),
        before,
        "a node moved, restarted or fenced"
    );
    for host in [&pair.hosts.a, &pair.hosts.b] {
        assert!(
            lease_expiries(host) >= 1,
            "no lease ran out on {}",
            host.name
        );
    }
}

#[test]
fn a_seeded_schedule_never_fences_and_a_host_cut_from_both_peers_fences_alone() {
    let _serial = serial();
    let mut pair = Pair::start("ps");
    let before = pair.nodes_seen();
    let schedule = FaultSchedule::new(
        "partition schedule",
        Duration::from_secs(12),
        40,
        (Duration::from_millis(100), Duration::from_millis(1500)),
    );
    let observer = FenceObserver::start(pair.watched(), SAMPLE_EVERY, Duration::from_secs(120));
    let began = Instant::now();
    for step in &schedule.steps {
        pair.play(step.fault, step.hold);
        pair.wait_held_everywhere();
    }
    eprintln!(
        "{} faults and heals played in {:?}",
        schedule.steps.len(),
        began.elapsed()
    );
    assert_never_fenced(&observer.finish(), "the schedule");
    assert_eq!(
        pair.nodes_seen(),
        before,
        "a node moved, restarted or fenced"
    );

    // a cut from b and from the witness: its node fenced within the lease, b's never.
    let na = WatchedNode::new(&pair.hosts.a, "na");
    let nb = WatchedNode::new(&pair.hosts.b, "nb");
    let observer = FenceObserver::start(vec![nb], SAMPLE_EVERY, Duration::from_secs(120));
    let cut = Instant::now();
    pair.partition.cut(Machine::A, Machine::B);
    pair.partition.cut(Machine::A, Machine::Witness);
    assert!(pair.partition.isolated(Machine::A));
    let mut fenced_in = None;
    while cut.elapsed() < 4 * LEASE {
        if na.frozen() && !na.eth0_up() {
            fenced_in = Some(cut.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("a cut from both peers to its node fenced: {fenced_in:?}");
    let fenced_in = fenced_in.expect("a's node fenced");
    assert!(fenced_in <= LEASE, "fenced only after {fenced_in:?}");
    // Watched for several leases more: b keeps the witness, and so quorum.
    std::thread::sleep(4 * LEASE);
    assert!(
        na.frozen() && !na.eth0_up(),
        "a's node thawed while cut off"
    );
    assert_never_fenced(&observer.finish(), "b while a was cut off");
    assert_eq!(pair.hosts.b.status()["fencing"]["quorum"], true);
    assert_eq!(pair.hosts.a.status()["fencing"]["quorum"], false);

    // Healed, a holds quorum again and thaws its node with its links.
    pair.partition.heal_all();
    wait_for("a's node thawed", Duration::from_secs(20), || {
        !na.frozen() && na.eth0_up()
    });
}

#[test]
fn both_cores_busy_for_a_minute_fence_nothing_and_expire_no_lease() {
    let _serial = serial();
    let pair = Pair::start("pl");
    let before = pair.nodes_seen();
    let expiries_before: Vec<u64> = [&pair.hosts.a, &pair.hosts.b]
        .into_iter()
        .map(lease_expiries)
        .collect();
    let observer = FenceObserver::start(pair.watched(), SAMPLE_EVERY, Duration::from_secs(120));
    let busy = BusyLoops::start(2);
    eprintln!("busy loops: pids {:?}", busy.pids());
    let began = Instant::now();
    let (mut rtt_max_us, mut p99_max_us, mut looks) = (0u64, 0u64, 0u32);
    while began.elapsed() < Duration::from_secs(60) {
        for host in [&pair.hosts.a, &pair.hosts.b] {
            let status = pair_status(host);
            for peer in ["partner", "witness"] {
                let lease = &status["leases"][peer];
                rtt_max_us = rtt_max_us.max(lease["rtt_us"].as_u64().unwrap_or(0));
                p99_max_us = p99_max_us.max(lease["rtt_p99_us"].as_u64().unwrap_or(0));
            }
        }
        looks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(busy);
    let observed = observer.finish();
    let expiries: Vec<u64> = [&pair.hosts.a, &pair.hosts.b]
        .into_iter()
        .zip(&expiries_before)
        .map(|(host, before)| lease_expiries(host) - before)
        .collect();
    eprintln!(
        "60 s with both cores busy: lease expiries (a, b) {expiries:?}, heartbeat round trip: \
         the largest of {looks} looks {rtt_max_us} us, the largest p99 {p99_max_us} us"
    );
    assert_never_fenced(&observed, "both cores busy");
    assert_eq!(expiries, [0, 0], "leases ran out under load");
    assert_eq!(
        pair.nodes_seen(),
        before,
        "a node moved, restarted or fenced"
    );
}

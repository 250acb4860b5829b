//! Partitions between the simulated machines of a pair (host a, host b, the witness): traffic
//! between two of them dropped both ways, in both of their network namespaces, by an nft table
//! of the test's own in each (`inet test_partition`: a set of the other side's addresses,
//! dropped on input and output). Healing removes the addresses; dropping the `Partition` deletes
//! the tables, on success and on failure (the namespaces' own drop would too).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use super::pair::PairHosts;
use super::witness::TestWitness;

/// One simulated machine of a pair with its witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Machine {
    A,
    B,
    Witness,
}

impl Machine {
    pub const ALL: [Machine; 3] = [Machine::A, Machine::B, Machine::Witness];

    fn index(self) -> usize {
        self as usize
    }
}

const TABLE: &str = "test_partition";

/// The partition tables of a pair's and its witness's namespaces, and the cuts now in force.
pub struct Partition {
    /// Per machine: its network namespace and every address it has on the test's links.
    machines: [(String, Vec<String>); 3],
    cuts: BTreeSet<(Machine, Machine)>,
}

impl Partition {
    /// Installs an empty partition table in each of the three namespaces: nothing dropped yet.
    pub fn new(hosts: &PairHosts, witness: &TestWitness) -> Partition {
        let k = hosts.k;
        let partition = Partition {
            machines: [
                (
                    hosts.spaces[0].0.clone(),
                    vec![format!("10.231.{k}.1"), format!("10.232.{k}.1")],
                ),
                (
                    hosts.spaces[1].0.clone(),
                    vec![format!("10.231.{k}.2"), format!("10.232.{k}.2")],
                ),
                (witness.space.0.clone(), vec![format!("10.232.{k}.3")]),
            ],
            cuts: BTreeSet::new(),
        };
        for (space, _) in &partition.machines {
            nft(
                space,
                &format!(
                    "table inet {TABLE} {{\n\
                     set cut {{ type ipv4_addr; }}\n\
                     chain input {{ type filter hook input priority -10; policy accept; ip saddr @cut drop; }}\n\
                     chain output {{ type filter hook output priority -10; policy accept; ip daddr @cut drop; }}\n\
                     }}\n"
                ),
            );
        }
        partition
    }

    /// Drops all traffic between `x` and `y`, both ways.
    pub fn cut(&mut self, x: Machine, y: Machine) {
        assert_ne!(x, y, "a machine cut from itself");
        self.set(x, y, "add");
        self.cuts.insert((x.min(y), x.max(y)));
    }

    /// Lets traffic between `x` and `y` through again.
    pub fn heal(&mut self, x: Machine, y: Machine) {
        if self.cuts.remove(&(x.min(y), x.max(y))) {
            self.set(x, y, "delete");
        }
    }

    /// Heals every cut.
    pub fn heal_all(&mut self) {
        for (x, y) in std::mem::take(&mut self.cuts) {
            self.set(x, y, "delete");
        }
    }

    /// Whether `x` can reach neither of the other two machines.
    pub fn isolated(&self, x: Machine) -> bool {
        Machine::ALL
            .iter()
            .filter(|&&y| y != x)
            .all(|&y| self.cuts.contains(&(x.min(y), x.max(y))))
    }

    pub fn cuts(&self) -> Vec<(Machine, Machine)> {
        self.cuts.iter().copied().collect()
    }

    /// `nft add|delete element` of each side's addresses in the other side's set.
    fn set(&self, x: Machine, y: Machine, verb: &str) {
        for (from, to) in [(x, y), (y, x)] {
            let (space, _) = &self.machines[from.index()];
            let (_, addresses) = &self.machines[to.index()];
            nft(
                space,
                &format!(
                    "{verb} element inet {TABLE} cut {{ {} }}\n",
                    addresses.join(", ")
                ),
            );
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for (space, _) in &self.machines {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{space}"))
                .args(["nft", "delete", "table", "inet", TABLE])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `nft -f -` with `script` inside the namespace `space`, insisting on success.
fn nft(space: &str, script: &str) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{space}"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("nft: {error} (scripts/setup.sh installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "nft in {space}: {script}");
}

//! The shared stack across a pair: a standalone host keeps its nodes in agent.toml; pairing
//! moves them into stack.toml as the first version; a reload on one host commits a change and
//! the partner applies it as a git commit with the same content; an invalid change is refused
//! on the host it was made on and changes nothing anywhere; a change only the partner refuses
//! shows in `pair status` on both; `config log`, `config diff` and `config rollback` work.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pair::{pair_status, PairHosts, METRICS_PORT};
use common::{sleeper_nodes, wait_for, TestHost};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

/// `stack.toml` of the version in force, read from the host's history with git itself.
fn committed_stack(host: &TestHost) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(host.state_dir().join("stack.git"))
        .args(["show", "main:stack.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stack_file(host: &TestHost) -> String {
    std::fs::read_to_string(host.dir.join("stack.toml")).unwrap()
}

fn stack_version(host: &TestHost) -> Option<u64> {
    pair_status(host)["stack"]["version"]["counter"].as_u64()
}

fn wait_version(host: &TestHost, counter: u64) {
    wait_for(
        &format!("{}'s stack at version {counter}", host.name),
        LIMIT,
        || stack_version(host) == Some(counter),
    );
}

fn log_lines(host: &TestHost) -> Vec<String> {
    host.cli(&["config", "log"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The host's recorded id slots, `state_dir/idmaps.json`.
fn recorded_slots(host: &TestHost) -> Value {
    let text = std::fs::read_to_string(host.state_dir().join("idmaps.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&text).map_or(Value::Null, |v| v["slots"].clone())
}

fn append(path: &Path, text: &str) {
    let mut body = std::fs::read_to_string(path).unwrap();
    body.push_str(text);
    std::fs::write(path, body).unwrap();
}

/// The veth end in host `n`'s namespace (`tests/common/pair.rs` names them).
fn pair_link(hosts: &PairHosts, n: usize) -> String {
    let side = ["a", "b"][n];
    format!("pv{}{side}{}", std::process::id() % 100_000, hosts.k)
}

#[test]
fn edits_made_at_once_on_both_hosts_settle_on_the_greater_version() {
    let hosts = PairHosts::start("ca", "cb");
    let (a, b) = (&hosts.a, &hosts.b);
    hosts.pair();
    wait_version(b, 1);

    // Cut the pair link, edit and reload on both: each commits its own version 2.
    hosts.spaces[0].ip(&["link", "set", &pair_link(&hosts, 0), "down"]);
    common::pair::wait_link(a, "down", LIMIT);
    common::pair::wait_link(b, "down", LIMIT);
    append(&a.dir.join("stack.toml"), "# edited on ca\n");
    append(&b.dir.join("stack.toml"), "# edited on cb\n");
    for host in [a, b] {
        assert!(host.cli(&["reload"]).contains("stack version 2 ("));
    }
    let ids: Vec<String> = [a, b]
        .iter()
        .map(|host| {
            pair_status(host)["stack"]["version"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    let (winner, loser) = if ids[0] > ids[1] { (a, b) } else { (b, a) };
    let winning = stack_file(winner);

    // The link back: both end on the version with the greater id; the other edit stays in the
    // history of the host that made it.
    hosts.spaces[0].ip(&["link", "set", &pair_link(&hosts, 0), "up"]);
    let greater = ids.iter().max().unwrap().clone();
    wait_for("both hosts on the greater version 2", LIMIT, || {
        [a, b]
            .iter()
            .all(|host| pair_status(host)["stack"]["version"]["id"] == greater.as_str())
    });
    assert_eq!(stack_file(loser), winning);
    assert_eq!(committed_stack(loser), committed_stack(winner));
    assert_eq!(log_lines(winner).len(), 2, "{:?}", log_lines(winner));
    let kept = log_lines(loser);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept[1].contains(&format!(" {} ", loser.name)), "{kept:?}");
    assert!(loser.daemon_log().contains("wins (the greater id)"));
    for host in [a, b] {
        let stack = &pair_status(host)["stack"];
        assert!(
            stack["refused_here"].is_null() && stack["refused_by_partner"].is_null(),
            "{stack}"
        );
    }
}

#[test]
fn a_stack_change_on_one_host_is_committed_and_applied_on_the_other() {
    let mut hosts = PairHosts::start("sa", "sb");
    let (a, b) = (&hosts.a, &hosts.b);
    let k = hosts.k;

    // Standalone, with its nodes in agent.toml: as before, no stack and no history.
    a.write_config(&format!(
        "{}\n[pair]\nlisten = \"10.231.{k}.1:7946\"\n\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
        sleeper_nodes(&["s1"])
    ));
    a.cli(&["reload"]);
    let s1 = a.wait_node_state("s1", "running")["pid"].as_i64().unwrap();
    assert!(!a.dir.join("stack.toml").exists());
    assert!(!a.state_dir().join("stack.git").exists());
    let no_history = a.try_cli(&["config", "log"]);
    assert!(!no_history.status.success());
    assert!(String::from_utf8_lossy(&no_history.stderr).contains("no stack history"));

    // Pairing moves the nodes and roles into stack.toml, says so, and commits version 1.
    let invite = a.try_cli(&["pair", "invite"]);
    assert!(invite.status.success());
    let token = String::from_utf8(invite.stdout).unwrap();
    assert_eq!(
        token.lines().count(),
        1,
        "the token alone on stdout: {token:?}"
    );
    let said = String::from_utf8_lossy(&invite.stderr).to_string();
    assert!(
        said.contains("moved 1 node and 1 role from agent.toml into"),
        "{said}"
    );
    let joined = b.try_cli(&["pair", "join", token.trim()]);
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    assert!(String::from_utf8_lossy(&joined.stderr).contains("the partner's stack replaces it"));
    let agent_toml = std::fs::read_to_string(&a.config).unwrap();
    assert!(!agent_toml.contains("[nodes"), "{agent_toml}");
    assert!(!agent_toml.contains("[roles"), "{agent_toml}");
    // s1's address (outside the plan: from the running record) and id range (recorded in a's
    // idmaps.json when it started) migrated into the stack.
    let s1_ip = a.node("s1")["ip"].as_str().unwrap().to_string();
    assert!(
        stack_file(a).contains(&format!(
            "[nodes.s1]\nrole = \"sleeper\"\nhost = \"sa\"\nip = \"{s1_ip}\"\n"
        )),
        "{}",
        stack_file(a)
    );
    let s1_slot = recorded_slots(a)["s1"].as_u64().expect("s1's slot on a");
    assert!(
        stack_file(a).ends_with(&format!("[slots]\ns1 = {s1_slot}\n")),
        "{}",
        stack_file(a)
    );
    assert!(a.daemon_log().contains("moved 1 node and 1 role"));
    wait_version(b, 1);
    assert_eq!(stack_file(b), stack_file(a));
    assert_eq!(committed_stack(b), committed_stack(a));
    assert_eq!(
        a.node("s1")["pid"].as_i64(),
        Some(s1),
        "moving restarted s1"
    );
    assert!(
        b.node("s1")["pid"].is_null(),
        "s1 is homed on sa: {}",
        b.node("s1")
    );
    assert_eq!(
        recorded_slots(b)["s1"],
        recorded_slots(a)["s1"],
        "the same id range on b"
    );
    assert_eq!(
        b.node("s1")["ip"],
        a.node("s1")["ip"],
        "the same address on b"
    );

    // A change on a: committed, sent, applied on b as a commit with the same content.
    append(
        &a.dir.join("stack.toml"),
        "\n[nodes.s2]\nrole = \"sleeper\"\nhost = \"sa\"\n",
    );
    let pending = a.cli(&["config", "diff"]);
    assert!(pending.contains("+[nodes.s2]"), "{pending}");
    let reloaded = a.cli(&["reload"]);
    assert!(reloaded.contains("stack version 2 ("), "{reloaded}");
    assert!(reloaded.contains("s2 added"), "{reloaded}");
    a.wait_node_state("s2", "running");
    wait_version(b, 2);
    assert_eq!(committed_stack(b), committed_stack(a));
    assert_eq!(stack_file(b), stack_file(a));
    let (log_a, log_b) = (log_lines(a), log_lines(b));
    assert_eq!(log_a.len(), 2, "{log_a:?}");
    assert_eq!(log_a, log_b, "both hosts name the versions alike");
    assert!(
        log_a[0].contains(" sa ") && log_a[0].ends_with("s2 added"),
        "{log_a:?}"
    );
    let on_b = b.node("s2");
    assert!(on_b["pid"].is_null());
    // Homed on a: remote on b, with where it lives and runs.
    assert_eq!(on_b["state"], "remote", "{on_b}");
    assert_eq!(
        (&on_b["home"], &on_b["host"]),
        (&"sa".into(), &"sa".into()),
        "{on_b}"
    );
    let on_a = a.node("s2");
    assert_eq!(
        (&on_a["home"], &on_a["host"]),
        (&"sa".into(), &"sa".into()),
        "{on_a}"
    );
    assert!(
        stack_file(a).contains("s2 = "),
        "a gave s2 its slot in the stack"
    );
    assert_eq!(recorded_slots(b)["s2"], recorded_slots(a)["s2"]);
    let s2_ip = a.node("s2")["ip"].as_str().unwrap().to_string();
    assert!(
        stack_file(a).contains(&format!("host = \"sa\"\nip = \"{s2_ip}\"\n")),
        "{}",
        stack_file(a)
    );
    assert_eq!(b.node("s2")["ip"], a.node("s2")["ip"]);
    assert_eq!(pair_status(b)["stack"]["refused_here"], Value::Null);

    // An invalid change: refused on a with the reason, nothing committed or sent.
    let before = stack_file(a);
    append(&a.dir.join("stack.toml"), "\n[nodes.s3]\nrole = \"nope\"\n");
    let refused = a.try_cli(&["reload"]);
    assert!(!refused.status.success());
    let reason = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        reason.contains("stack.toml:") && reason.contains("unknown role `nope`"),
        "{reason}"
    );
    assert_eq!(log_lines(a).len(), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log_lines(b).len(), 2);
    assert_eq!(stack_version(b), Some(2));
    std::fs::write(a.dir.join("stack.toml"), &before).unwrap();

    // A change only b refuses (a template that exists beside a's agent.toml only): a runs it,
    // b keeps version 2, and both show the refusal.
    std::fs::create_dir_all(a.dir.join("templates")).unwrap();
    std::fs::write(a.dir.join("templates/only-a.conf"), "{{ node.name }}\n").unwrap();
    append(
        &a.dir.join("stack.toml"),
        "\n[roles.tpl]\nimage = \"busybox\"\n[[roles.tpl.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1000000\"]\n[[roles.tpl.template]]\nsource = \"only-a.conf\"\ndest = \"/etc/only-a.conf\"\n",
    );
    assert!(a.cli(&["reload"]).contains("stack version 3 ("));
    wait_for("b's refusal on a", LIMIT, || {
        pair_status(a)["stack"]["refused_by_partner"]["version"]["counter"] == 3
    });
    for (host, field) in [(a, "refused_by_partner"), (b, "refused_here")] {
        let refusal = &pair_status(host)["stack"][field];
        let reason = refusal["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("only-a.conf"), "{}: {refusal}", host.name);
        assert!(host.cli(&["pair", "status"]).contains("stack version 3"));
    }
    assert_eq!(stack_version(b), Some(2));
    assert_eq!(log_lines(b).len(), 2);
    assert!(!stack_file(b).contains("roles.tpl"));
    let diff = a.cli(&["config", "diff", "2", "3"]);
    assert!(diff.contains("+[roles.tpl]"), "{diff}");

    // Rollback to 2 makes version 4, which b applies; the refusals clear on both.
    let rolled = a.cli(&["config", "rollback", "2"]);
    assert!(rolled.contains("stack version 4 ("), "{rolled}");
    wait_version(b, 4);
    assert_eq!(committed_stack(b), committed_stack(a));
    assert_eq!(stack_file(a), before);
    assert_eq!(stack_file(b), before);
    assert!(
        log_lines(a)[0].contains("rollback to version 2 ("),
        "{:?}",
        log_lines(a)
    );
    wait_for("the refusals cleared", LIMIT, || {
        pair_status(a)["stack"]["refused_by_partner"].is_null()
            && pair_status(b)["stack"]["refused_here"].is_null()
    });
    assert!(a.cli(&["config", "diff", "2"]).trim().is_empty());

    // b's own record gives the next free slot to another owner: a's next node gets that slot
    // in the stack, and b refuses the version naming the node; a runs it.
    let next = (0..)
        .find(|slot| {
            let recorded = recorded_slots(a);
            let taken = recorded.as_object().unwrap().values();
            !taken.clone().any(|s| s.as_u64() == Some(*slot))
        })
        .unwrap();
    hosts.b.kill_daemon(libc::SIGTERM);
    let idmaps = hosts.b.state_dir().join("idmaps.json");
    let mut record: Value =
        serde_json::from_str(&std::fs::read_to_string(&idmaps).unwrap()).unwrap();
    record["slots"]["ghost"] = Value::from(next);
    std::fs::write(&idmaps, record.to_string()).unwrap();
    let space = hosts.spaces[1].0.clone();
    hosts.b.start_daemon_in_netns(&space);
    let (a, b) = (&hosts.a, &hosts.b);
    common::pair::wait_link(b, "up", LIMIT);
    append(
        &a.dir.join("stack.toml"),
        "\n[nodes.s4]\nrole = \"sleeper\"\nhost = \"sa\"\n",
    );
    assert!(a.cli(&["reload"]).contains("stack version 5 ("));
    assert!(
        stack_file(a).contains(&format!("s4 = {next}")),
        "{}",
        stack_file(a)
    );
    wait_for("b's refusal of version 5 on a", LIMIT, || {
        pair_status(a)["stack"]["refused_by_partner"]["version"]["counter"] == 5
    });
    let reason = pair_status(a)["stack"]["refused_by_partner"]["reason"].to_string();
    let expected =
        format!("s4: the stack gives it id slot {next}, which this host's idmaps.json gives ghost");
    assert!(reason.contains(&expected), "{reason}");
    assert_eq!(stack_version(b), Some(4));
    assert_eq!(recorded_slots(b)["s4"], Value::Null);
    a.wait_node_state("s4", "running");
}

//! Bad configuration is refused with its file, line, column and field named, and changes nothing.

mod common;

use std::process::Command;

use common::{sleeper_nodes, TestHost, SLEEPER_ROLE};

fn check(host: &TestHost) -> (bool, String) {
    let output = host.try_cli(&["config", "check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn a_valid_config_checks_ok() {
    let host = TestHost::new(
        "cfgok",
        &format!("[nodes.s1]\nrole = \"sleeper\"\n{SLEEPER_ROLE}"),
    );
    let (ok, text) = check(&host);
    assert!(ok, "{text}");
    assert!(text.contains("1 nodes: s1"), "{text}");
}

#[test]
fn each_kind_of_error_is_located_and_exits_non_zero() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "invalid TOML",
            "[nodes.s1\nrole = \"sleeper\"\n",
            "agent.toml:19:",
        ),
        (
            "unknown role",
            "[nodes.s1]\nrole = \"sleper\"\n",
            "agent.toml:20:8: nodes.s1.role: unknown role `sleper`",
        ),
        (
            "unknown field",
            "[nodes.s1]\nrole = \"web\"\nmemroy = \"1G\"\n",
            "agent.toml:21:1: unknown field `memroy`",
        ),
        ("duplicate address", "DUPLICATE", "DUPLICATE"),
        (
            "allow from an unknown role",
            "[nodes.s1]\nrole = \"ghost\"\n[roles.ghost]\nimage = \"busybox\"\n[[roles.ghost.allow]]\nfrom = [\"*\", \"nosuchrole\"]\nports = [80]\n",
            "agent.toml:24:8: roles.ghost.allow.from: `nosuchrole` is not a role",
        ),
        (
            "missing image",
            "[nodes.s1]\nrole = \"ghost\"\n[roles.ghost]\nimage = \"nosuchimage\"\n",
            "image `nosuchimage` (nodes s1) does not exist",
        ),
    ];
    // Test configs put 17 lines of [host] and [network] before the body.
    for (what, body, expected) in cases {
        let host = TestHost::new("cfgbad", "");
        let web1 = host.net.ip(21);
        let (body, expected) = if *body == "DUPLICATE" {
            (
                format!(
                    "[nodes.web1]\nrole = \"web\"\n[nodes.web2]\nrole = \"web\"\nip = \"{web1}\"\n"
                ),
                format!(
                    "agent.toml:23:6: nodes.web2.ip: address {web1} is already used by node web1"
                ),
            )
        } else {
            (body.to_string(), expected.to_string())
        };
        host.write_config(&body);
        let (ok, text) = check(&host);
        assert!(!ok, "{what}: config check passed:\n{text}");
        assert!(
            text.contains(&expected),
            "{what}: expected `{expected}` in:\n{text}"
        );
    }
}

#[test]
fn run_with_a_bad_config_starts_nothing() {
    let host = TestHost::new(
        "cfgrun",
        &format!("[nodes.s1]\nrole = \"sleeper\"\n[nodes.s2]\nrole = \"nope\"\n{SLEEPER_ROLE}"),
    );
    let output = host.try_cli(&["run"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nodes.s2.role"), "{stderr}");
    assert!(host.cgroup_dirs().is_empty(), "a cgroup was made");
    assert!(
        !host.run_dir().join("nodes").exists(),
        "a node run dir was made"
    );
}

#[test]
fn an_unknown_image_builder_is_located() {
    let host = TestHost::new("cfgbuilder", "");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replacen("[host]\n", "[host]\nimage_builder = \"cdebootstrap\"\n", 1),
    )
    .unwrap();
    let (ok, text) = check(&host);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "agent.toml:2:17: host.image_builder: `cdebootstrap` is not one of auto, mmdebstrap, \
             debootstrap"
        ),
        "{text}"
    );
}

/// A veth pair `<name>` / `<name>p` made for one test (this kernel may have no dummy links),
/// removed on drop.
struct TestLink(String);

impl TestLink {
    fn new(name: String) -> TestLink {
        let made = Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name"])
            .arg(format!("{name}p"))
            .status()
            .unwrap();
        assert!(made.success(), "ip link add {name}");
        TestLink(name)
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn settings_that_collide_with_the_host_are_located() {
    let host = TestHost::new("cfghost", &sleeper_nodes(&["s1"]));
    for interface in ["lo", "VETH"] {
        let veth = TestLink::new(format!("{}rt", host.net.link_prefix));
        let interface = interface.replace("VETH", &veth.0);
        host.set_setting("bridge", &format!("\"{interface}\""));
        let (ok, text) = check(&host);
        assert!(!ok, "{text}");
        assert!(
            text.contains(&format!(
                "agent.toml:11:10: network.bridge: `{interface}` is an existing interface that is not a bridge"
            )),
            "{text}"
        );
        host.write_config(&sleeper_nodes(&["s1"]));
    }

    // A subnet one of the host's routes covers.
    let veth = TestLink::new(format!("{}rt", host.net.link_prefix));
    let k = host.net.k;
    let peer = format!("{}p", veth.0);
    for args in [
        vec!["addr", "add", &format!("10.212.{k}.1/24"), "dev", &veth.0],
        vec!["link", "set", &veth.0, "up"],
        vec!["link", "set", &peer, "up"],
    ] {
        let done = Command::new("ip").args(&args).status().unwrap();
        assert!(done.success(), "ip {args:?}");
    }
    host.set_setting("subnet", &format!("\"10.212.{k}.0/25\""));
    host.set_setting("host_ip", &format!("\"10.212.{k}.126\""));
    let (ok, text) = check(&host);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "agent.toml:12:10: network.subnet: 10.212.{k}.0/25 overlaps the host's route to 10.212.{k}.0/24 on {}",
            veth.0
        )),
        "{text}"
    );
}

#[test]
fn the_agent_s_own_bridge_route_is_no_collision() {
    let mut host = TestHost::new("cfgown", &sleeper_nodes(&["s1"]));
    host.start_daemon();
    host.wait_node_state("s1", "running");
    // The bridge exists now, with the route to the subnet on it.
    let (ok, text) = check(&host);
    assert!(ok, "{text}");
    host.kill_daemon(libc::SIGKILL);
    let (ok, text) = check(&host);
    assert!(ok, "{text}");
    host.start_daemon();
    host.wait_node_state("s1", "running");
}

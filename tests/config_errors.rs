//! Bad configuration is refused with its file, line, column and field named, and changes nothing.

mod common;

use common::{TestHost, SLEEPER_ROLE};

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
            "agent.toml:18:",
        ),
        (
            "unknown role",
            "[nodes.s1]\nrole = \"sleper\"\n",
            "agent.toml:19:8: nodes.s1.role: unknown role `sleper`",
        ),
        (
            "unknown field",
            "[nodes.s1]\nrole = \"web\"\nmemroy = \"1G\"\n",
            "agent.toml:20:1: unknown field `memroy`",
        ),
        ("duplicate address", "DUPLICATE", "DUPLICATE"),
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
                    "agent.toml:22:6: nodes.web2.ip: address {web1} is already used by node web1"
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

use std::net::Ipv4Addr;

use super::*;

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    parse(&Source::new("agent.toml", text))
}

fn first_error(text: &str) -> Diagnostic {
    let error = parse_text(text).expect_err("config should be refused");
    error.diagnostics()[0].clone()
}

/// The first problem of `text` is at `(line, column)` and its message holds every fragment.
fn assert_error_at(text: &str, (line, column): (usize, usize), fragments: &[&str]) {
    let error = first_error(text);
    assert_eq!((error.line, error.column), (line, column), "{error:?}");
    for fragment in fragments {
        assert!(
            error.message.contains(fragment),
            "{fragment:?} not in {error:?}"
        );
    }
}

const SLEEPER: &str = r#"
[host]
state_dir = "/tmp/ms"
[nodes.s1]
role = "sleeper"
[roles.sleeper]
image = "busybox"
[[roles.sleeper.process]]
name = "sleep"
command = ["sleep", "1000000"]
"#;

#[test]
fn embedded_default_runs_the_default_node_set_on_the_plan() {
    let config = load(None).unwrap();
    let names: Vec<&str> = config.nodes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["acc1", "db1", "fw1", "lb1", "mail1", "monitor1", "web1", "web2"]
    );
    let ip = |node: &str| config.nodes[node].ip();
    assert_eq!(ip("fw1"), Ipv4Addr::new(172, 16, 0, 1));
    assert_eq!(ip("lb1"), Ipv4Addr::new(172, 16, 0, 11));
    assert_eq!(ip("web2"), Ipv4Addr::new(172, 16, 0, 22));
    assert_eq!(ip("db1"), Ipv4Addr::new(172, 16, 0, 41));
    assert_eq!(ip("acc1"), Ipv4Addr::new(172, 16, 0, 61));
    assert_eq!(
        config.nodes["db1"].definition.volumes[0].path,
        "/var/lib/mysql"
    );
    assert_eq!(config.origin, DEFAULT_CONFIG_NAME);
}

#[test]
fn inline_role_defines_a_new_role_from_address_100() {
    let config = parse_text(SLEEPER).unwrap();
    let node = &config.nodes["s1"];
    assert_eq!(node.definition.processes[0].command, ["sleep", "1000000"]);
    assert_eq!(node.definition.processes[0].restart, RestartPolicy::Always);
    assert_eq!(node.ip(), Ipv4Addr::new(172, 16, 0, 100));
    assert_eq!(config.host.state_dir, std::path::PathBuf::from("/tmp/ms"));
    assert_eq!(
        config.host.image_dir,
        std::path::PathBuf::from("/tmp/ms/images")
    );
}

#[test]
fn image_dir_may_be_placed_apart_from_the_state_dir() {
    let text = SLEEPER.replace("[host]\n", "[host]\nimage_dir = \"/srv/images\"\n");
    let config = parse_text(&text).unwrap();
    assert_eq!(
        config.host.image_dir,
        std::path::PathBuf::from("/srv/images")
    );
    let text = SLEEPER.replace("[host]\n", "[host]\nimage_dir = \"images\"\n");
    let error = first_error(&text);
    assert!(
        error
            .message
            .contains("host.image_dir: must be an absolute path"),
        "{error:?}"
    );
}

#[test]
fn image_builder_is_auto_unless_forced() {
    assert_eq!(
        parse_text(SLEEPER).unwrap().host.image_builder,
        ImageBuilder::Auto
    );
    for (text, builder) in [
        ("auto", ImageBuilder::Auto),
        ("mmdebstrap", ImageBuilder::Mmdebstrap),
        ("debootstrap", ImageBuilder::Debootstrap),
    ] {
        let config = SLEEPER.replace("[host]\n", &format!("[host]\nimage_builder = \"{text}\"\n"));
        assert_eq!(parse_text(&config).unwrap().host.image_builder, builder);
    }
    let text = SLEEPER.replace("[host]\n", "[host]\nimage_builder = \"cdebootstrap\"\n");
    let error = first_error(&text);
    assert_eq!(
        error.to_string(),
        "agent.toml:3:17: host.image_builder: `cdebootstrap` is not one of auto, mmdebstrap, \
         debootstrap"
    );
    let text = SLEEPER.replace("[host]\n", "[host]\nimage_builder = true\n");
    let error = first_error(&text);
    assert_eq!((error.line, error.column), (3, 17), "{error}");
}

#[test]
fn the_id_base_is_a_whole_range_above_the_hosts_own_ids() {
    assert_eq!(parse_text(SLEEPER).unwrap().host.id_base, DEFAULT_ID_BASE);
    let with = |value: &str| SLEEPER.replace("[host]\n", &format!("[host]\nid_base = {value}\n"));
    assert_eq!(parse_text(&with("16777216")).unwrap().host.id_base, 1 << 24);
    for bad in ["0", "1000", "65535", "-65536", "4294901760", "99999999999"] {
        let error = first_error(&with(bad));
        assert_eq!((error.line, error.column), (3, 11), "{bad}: {error}");
        assert!(
            error
                .to_string()
                .contains("host.id_base: a multiple of 65536 from 65536 to"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn inline_tables_merge_key_by_key_and_arrays_replace() {
    let config = parse_text(
        r#"
[nodes.web1]
role = "web"
[nodes.web2]
role = "web"
[nodes.web2.resources]
pids = 99
[roles.web.resources]
memory = "64M"
[[roles.web.process]]
name = "sleep"
command = ["sleep", "5"]
restart = "on-failure"
"#,
    )
    .unwrap();
    let web1 = &config.nodes["web1"];
    assert_eq!(web1.definition.resources.memory_bytes, Some(64 << 20));
    assert_eq!(
        web1.definition.resources.cpus,
        Some(2.0),
        "kept from roles/web.toml"
    );
    assert_eq!(web1.definition.processes.len(), 1);
    assert_eq!(web1.definition.processes[0].name, "sleep");
    assert_eq!(
        web1.definition.processes[0].restart,
        RestartPolicy::OnFailure
    );
    assert_eq!(
        web1.definition.volumes[0].name, "media",
        "volumes kept from the shipped role"
    );
    let web2 = &config.nodes["web2"];
    assert_eq!(web2.definition.resources.pids, Some(99));
    assert_eq!(web2.definition.resources.memory_bytes, Some(64 << 20));
}

#[test]
fn invalid_toml_names_file_line_and_column() {
    let error = first_error("[host]\nname = \n");
    assert_eq!((error.file.as_str(), error.line), ("agent.toml", 2));
    assert!(error.to_string().starts_with("agent.toml:2:"), "{error}");
}

#[test]
fn unknown_field_is_named_with_its_place() {
    let error = first_error("[host]\nname = \"dh1\"\nstate_dri = \"/x\"\n");
    assert_eq!((error.line, error.column), (3, 1));
    assert!(error.message.contains("state_dri"), "{error}");
}

#[test]
fn unknown_field_inside_an_inline_role_is_named() {
    let error = first_error("[roles.web]\nimgae = \"busybox\"\n");
    assert_eq!(error.line, 2);
    assert!(error.message.contains("imgae"), "{error}");
}

#[test]
fn unknown_role_names_the_node_field_and_place() {
    let error = first_error("[nodes.x1]\nrole = \"wbe\"\n");
    assert_eq!((error.line, error.column), (2, 8));
    assert!(error.message.contains("nodes.x1.role"), "{error}");
    assert!(error.message.contains("wbe"), "{error}");
}

#[test]
fn duplicate_addresses_name_both_nodes() {
    let error = first_error(
        "[nodes.web1]\nrole = \"web\"\n[nodes.web2]\nrole = \"web\"\nip = \"172.16.0.21\"\n",
    );
    assert!(error.message.contains("172.16.0.21"), "{error}");
    assert!(
        error.message.contains("web1") && error.message.contains("web2"),
        "{error}"
    );
    assert_eq!(error.line, 5);
}

#[test]
fn bad_values_are_all_reported_with_fields() {
    let error = parse_text(
        r#"
[nodes.web1]
role = "web"
[nodes.web1.resources]
memory = "lots"
[roles.web]
[[roles.web.process]]
name = "x"
command = []
restart = "sometimes"
"#,
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("nodes.web1.resources.memory"), "{text}");
    assert!(text.contains("roles.web.process.x.command"), "{text}");
    assert!(text.contains("sometimes"), "{text}");
    assert_eq!(error.diagnostics().len(), 3, "{text}");
}

#[test]
fn role_without_image_is_refused() {
    let error = first_error("[nodes.t1]\nrole = \"t\"\n[roles.t]\n[[roles.t.process]]\nname = \"a\"\ncommand = [\"true\"]\n");
    assert!(error.message.contains("roles.t: has no `image`"), "{error}");
    assert_eq!(error.line, 3);
}

#[test]
fn volume_paths_must_stay_out_of_kernel_filesystems() {
    let error =
        first_error("[roles.web]\n[[roles.web.volume]]\nname = \"v\"\npath = \"/proc/x\"\n");
    assert!(error.message.contains("roles.web.volume.v.path"), "{error}");
}

#[test]
fn node_names_must_fit_link_names() {
    let error =
        first_error("[nodes.averyveryverylongname1]\nrole = \"web\"\nip = \"172.16.0.30\"\n");
    assert!(error.message.contains("at most 12"), "{error}");
}

#[test]
fn addresses_outside_the_subnet_are_refused() {
    let error = first_error("[nodes.web1]\nrole = \"web\"\nip = \"10.0.0.1\"\n");
    assert!(error.message.contains("nodes.web1.ip"), "{error}");
}

#[test]
fn shipped_roles_all_parse_and_complete() {
    let config = load(None).unwrap();
    for node in config.nodes.values() {
        // The built-in image, or one with a shipped recipe.
        let shipped = crate::image::recipe::SHIPPED
            .iter()
            .any(|(name, _)| *name == node.definition.image);
        assert!(
            node.definition.image == "busybox" || shipped,
            "{}: {}",
            node.name,
            node.definition.image
        );
        assert!(!node.definition.processes.is_empty(), "{}", node.name);
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn floor_char_boundary(text: &str, mut at: usize) -> usize {
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_text(&text);
        }

        /// A real configuration (the shipped default) mangled the way an editor or a torn
        /// write would: a span cut out and arbitrary text put in its place. It parses or fails
        /// with diagnostics inside the text, never panics.
        #[test]
        fn mangled_configs_never_panic_and_errors_point_inside_the_text(
            start in 0usize..4000,
            len in 0usize..64,
            insert in "\\PC{0,16}",
        ) {
            let shipped = super::shipped::default_config().text;
            let text = format!("{}{}", shipped, SLEEPER);
            let start = floor_char_boundary(&text, start.min(text.len()));
            let end = floor_char_boundary(&text, (start + len).min(text.len()));
            let mangled = format!("{}{}{}", &text[..start], insert, &text[end..]);
            if let Err(error) = parse_text(&mangled) {
                let lines = mangled.lines().count().max(1);
                for diagnostic in error.diagnostics() {
                    prop_assert!(diagnostic.line >= 1 && diagnostic.line <= lines + 1, "{}", diagnostic);
                }
            }
        }

        /// The CLI's lenient reading of `[host] run_dir` never panics either.
        #[test]
        fn lenient_reading_of_arbitrary_files_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, &bytes).unwrap();
            let _ = run_dir(Some(&path));
            let _ = log_dir(Some(&path));
            let _ = load(Some(&path));
        }

        #[test]
        fn arbitrary_node_tables_load_or_fail_with_located_errors(
            name in "[a-z][a-z0-9-]{0,14}",
            role in prop::sample::select(vec!["web", "db", "lb", "nope", "acc"]),
            memory in "[0-9]{1,4}[KMGTX]?",
        ) {
            let text = format!("[nodes.{name}]\nrole = \"{role}\"\n[nodes.{name}.resources]\nmemory = \"{memory}\"\n");
            match parse_text(&text) {
                Ok(config) => prop_assert!(config.nodes.contains_key(&name)),
                Err(error) => {
                    prop_assert!(!error.diagnostics().is_empty());
                    for diagnostic in error.diagnostics() {
                        prop_assert!(diagnostic.line >= 1 && diagnostic.line <= 4, "{}", diagnostic);
                    }
                }
            }
        }
    }
}

#[test]
fn run_dir_is_found_even_in_a_config_that_does_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[host]\nrun_dir = \"/tmp/x\"\n[nodes.a1]\nrole = \"nope\"\n",
    )
    .unwrap();
    assert_eq!(
        run_dir(Some(&path)).unwrap(),
        std::path::PathBuf::from("/tmp/x")
    );
    assert_eq!(
        run_dir(None).unwrap(),
        std::path::PathBuf::from("/run/magestack")
    );
}

#[test]
fn resources_outside_their_bounds_are_located_with_the_field_and_the_bound() {
    let text = format!(
        "{SLEEPER}[nodes.s1.resources]\npids = 1\nmemory = \"1\"\ncpus = 2000.0\n[roles.sleeper.resources]\npids = 99999999999999\n"
    );
    let error = parse_text(&text).unwrap_err();
    let found: Vec<(usize, usize, &str)> = error
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(found.len(), 4, "{error}");
    let at = |line: usize, column: usize, start: &str, bound: &str| {
        assert!(
            found.iter().any(|(l, c, m)| (*l, *c) == (line, column)
                && m.starts_with(start)
                && m.contains(bound)),
            "{line}:{column} {start} ... {bound} not in {error}"
        )
    };
    at(
        12,
        8,
        "nodes.s1.resources.pids: 1 is too few",
        "at least 16",
    );
    at(
        13,
        10,
        "nodes.s1.resources.memory: `1` is too little",
        "at least 16M",
    );
    at(
        14,
        8,
        "nodes.s1.resources.cpus: 2000 is too many",
        "at most 1024",
    );
    at(
        16,
        8,
        "roles.sleeper.resources.pids: 99999999999999",
        "at most 4194304",
    );
}

#[test]
fn http_checks_must_name_a_local_address() {
    let error = first_error(&format!(
        "{SLEEPER}[roles.sleeper.health]\nhttp = \"http://example.com/health\"\n"
    ));
    assert!(
        error.message.contains("roles.sleeper.health.http") && error.message.contains("IPv4"),
        "{error}"
    );
    assert_eq!(error.line, 12);
    let config = parse_text(&format!(
        "{SLEEPER}[roles.sleeper.health]\nhttp = \"/health\"\ninterval = \"200ms\"\n"
    ))
    .unwrap();
    let health = config.nodes["s1"].definition.health.as_ref().unwrap();
    assert_eq!(health.check, HealthCheck::Http("/health".into()));
    assert_eq!(health.interval, std::time::Duration::from_millis(200));
    assert_eq!((health.healthy_after, health.unhealthy_after), (1, 3));
}

#[test]
fn metrics_are_off_unless_listen_names_an_address_with_a_port() {
    assert_eq!(parse_text(SLEEPER).unwrap().metrics.listen, None);
    let config = parse_text(&format!(
        "{SLEEPER}[metrics]\nlisten = \"127.0.0.1:9477\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9477".parse().unwrap())
    );
    let error = first_error(&format!("{SLEEPER}[metrics]\nlisten = \"localhost\"\n"));
    assert_eq!(error.line, 12);
    assert!(error.message.contains("metrics.listen"), "{error}");
    let unknown = first_error(&format!("{SLEEPER}[metrics]\nport = 9477\n"));
    assert!(unknown.message.contains("port"), "{unknown}");
}

#[test]
fn the_pair_link_is_off_unless_listen_names_an_address_the_partner_can_dial() {
    let standalone = parse_text(SLEEPER).unwrap().pair;
    assert_eq!(standalone, crate::config::PairSettings::default());
    assert_eq!(standalone.heartbeat, std::time::Duration::from_millis(100));
    assert_eq!(standalone.lease, std::time::Duration::from_millis(500));
    assert_eq!(
        standalone.fence_margin,
        std::time::Duration::from_millis(200)
    );
    let paired = parse_text(&format!(
        "{SLEEPER}[pair]\nlisten = \"10.0.0.1:7946\"\nlease = \"1s\"\n"
    ))
    .unwrap()
    .pair;
    assert_eq!(paired.listen, Some("10.0.0.1:7946".parse().unwrap()));
    assert_eq!(paired.lease, std::time::Duration::from_secs(1));
    for (text, field) in [
        ("listen = \"0.0.0.0:7946\"", "pair.listen"),
        ("listen = \"10.0.0.1\"", "pair.listen"),
        ("listen = \"10.0.0.1:0\"", "pair.listen"),
        ("heartbeat = \"1d\"", "pair.heartbeat"),
        ("lease = \"50ms\"", "pair.lease"),
        ("fence_margin = \"0ms\"", "pair.fence_margin"),
    ] {
        let error = first_error(&format!("{SLEEPER}[pair]\n{text}\n"));
        assert_eq!(error.line, 12, "{text}: {error}");
        assert!(error.message.contains(field), "{text}: {error}");
    }
}

#[test]
fn the_init_lease_leaves_the_partner_s_lease_two_heartbeats() {
    let ms = std::time::Duration::from_millis;
    let defaults = crate::config::PairSettings::default();
    assert_eq!(defaults.init_lease(), ms(300));
    let settings = parse_text(&format!(
        "{SLEEPER}[pair]\nlisten = \"10.0.0.1:7946\"\nheartbeat = \"50ms\"\nlease = \"2s\"\n"
    ))
    .unwrap()
    .pair;
    assert_eq!(settings.init_lease(), ms(1900));
    let tight = first_error(&format!("{SLEEPER}[pair]\nlease = \"250ms\"\n"));
    assert!(tight.message.contains("three pair.heartbeat"), "{tight}");
}

#[test]
fn fence_and_alert_commands_are_absolute_programs_with_arguments() {
    let settings = parse_text(&format!(
        "{SLEEPER}[pair]\nfence_command = [\"/usr/local/sbin/fence-dh2\", \"--now\"]\nalert_command = [\"/usr/local/sbin/page-ops\"]\n"
    ))
    .unwrap()
    .pair;
    assert_eq!(
        settings.fence_command,
        Some(vec![
            "/usr/local/sbin/fence-dh2".to_string(),
            "--now".into()
        ])
    );
    assert_eq!(
        settings.alert_command,
        Some(vec!["/usr/local/sbin/page-ops".to_string()])
    );
    for (text, field, says) in [
        ("fence_command = []", "pair.fence_command", "empty"),
        (
            "alert_command = [\"page-ops\"]",
            "pair.alert_command",
            "absolute",
        ),
        ("alert_command = \"/bin/true\"", "expected a sequence", ""),
    ] {
        let error = first_error(&format!("{SLEEPER}[pair]\n{text}\n"));
        assert_eq!(error.line, 12, "{text}: {error}");
        assert!(error.message.contains(field), "{text}: {error}");
        assert!(error.message.contains(says), "{text}: {error}");
    }
}

#[test]
fn log_rotation_defaults_and_limits() {
    assert_eq!(
        parse_text(SLEEPER).unwrap().logs,
        crate::config::LogRotation::default()
    );
    let config = parse_text(&format!("{SLEEPER}[logs]\nmax_size = \"64K\"\nkeep = 2\n")).unwrap();
    assert_eq!((config.logs.max_size, config.logs.keep), (64 << 10, 2));
    let small = first_error(&format!("{SLEEPER}[logs]\nmax_size = \"12\"\n"));
    assert_eq!(small.line, 12);
    assert!(small.message.contains("logs.max_size"), "{small}");
    let negative = first_error(&format!("{SLEEPER}[logs]\nkeep = -1\n"));
    assert!(negative.message.contains("logs.keep"), "{negative}");
}

#[test]
fn log_dir_is_read_leniently_like_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[host]\nlog_dir = \"/srv/logs\"\n[nodes.x]\nbroken = 1\n",
    )
    .unwrap();
    assert_eq!(
        log_dir(Some(&path)).unwrap(),
        std::path::PathBuf::from("/srv/logs")
    );
    assert_eq!(
        log_dir(None).unwrap(),
        std::path::PathBuf::from("/var/log/magestack")
    );
}

#[test]
fn a_privileged_role_must_state_its_reason_and_no_shipped_role_is_privileged() {
    let privileged = |extra: &str| {
        SLEEPER.replace(
            "image = \"busybox\"\n",
            &format!("image = \"busybox\"\nprivileged = true\n{extra}"),
        )
    };
    let error = first_error(&privileged(""));
    assert!(error.message.contains("privileged_reason"), "{error}");
    assert_eq!(error.line, 8);
    let config = parse_text(&privileged(
        "privileged_reason = \"loads a kernel module\"\n",
    ))
    .unwrap();
    assert!(config.nodes["s1"].definition.privileged);
    let shipped = load(None).unwrap();
    assert!(shipped
        .nodes
        .values()
        .all(|node| !node.definition.privileged));
}

#[test]
fn ssh_keys_merge_user_by_user() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIm9Z0ZmD3Q ops@example";
    let config = parse_text(&format!(
        "[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"{key}\"]\n"
    ))
    .unwrap();
    let acc1 = &config.nodes["acc1"];
    assert_eq!(acc1.definition.ssh_keys["root"], vec![key.to_string()]);
    assert!(
        acc1.definition.ssh_keys["www-data"].is_empty(),
        "kept from roles/acc.toml"
    );
}

#[test]
fn ssh_keys_are_checked_with_their_place() {
    assert_error_at(
        "[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"ssh-ed25519\"]\n",
        (4, 9),
        &["roles.acc.ssh_keys.root", "base64"],
    );
    let error = first_error(
        "[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"password123\"]\n",
    );
    assert!(error.message.contains("is not a public key"), "{error:?}");
    let error = first_error("[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nRoot = []\n");
    assert_eq!((error.line, error.column), (4, 1), "{error:?}");
    assert!(error.message.contains("user names"), "{error:?}");
    let error = first_error(
        "[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\\nx\"]\n",
    );
    assert!(error.message.contains("one line"), "{error:?}");
}

#[test]
fn nodes_outside_the_plan_keep_their_running_addresses_when_others_come() {
    let text = |nodes: &[&str]| {
        let mut text = SLEEPER.replace("[nodes.s1]\nrole = \"sleeper\"\n", "[nodes]\n");
        for node in nodes {
            text.push_str(&format!("[nodes.{node}]\nrole = \"sleeper\"\n"));
        }
        text
    };
    let resolve_with = |nodes: &[&str], kept: &BTreeMap<String, Ipv4Addr>| {
        resolve::resolve(&Source::new("agent.toml", text(nodes)), kept).unwrap()
    };
    let host = |n: u8| Ipv4Addr::new(172, 16, 0, n);
    let first = resolve_with(&["b1", "c1"], &BTreeMap::new());
    assert_eq!(
        (first.nodes["b1"].ip(), first.nodes["c1"].ip()),
        (host(100), host(101))
    );

    // Without what runs, a1 sorts first and takes .100, moving b1 and c1.
    let renumbered = resolve_with(&["a1", "b1", "c1"], &BTreeMap::new());
    assert_eq!(renumbered.nodes["b1"].ip(), host(101));
    // With it, b1 and c1 keep theirs and a1 takes the next free one.
    let running: BTreeMap<String, Ipv4Addr> = first
        .nodes
        .values()
        .map(|spec| (spec.name.clone(), spec.ip()))
        .collect();
    let kept = resolve_with(&["a1", "b1", "c1"], &running);
    let ips: Vec<Ipv4Addr> = ["a1", "b1", "c1"]
        .iter()
        .map(|node| kept.nodes[*node].ip())
        .collect();
    assert_eq!(ips, [host(102), host(100), host(101)]);

    // A kept address another node now claims explicitly goes to that node.
    let claimed = text(&["b1", "c1"]).replace(
        "[nodes.c1]\nrole = \"sleeper\"\n",
        "[nodes.c1]\nrole = \"sleeper\"\nip = \"172.16.0.100\"\n",
    );
    let mut kept_c1_elsewhere = running.clone();
    kept_c1_elsewhere.insert("c1".into(), host(101));
    let config =
        resolve::resolve(&Source::new("agent.toml", &claimed), &kept_c1_elsewhere).unwrap();
    assert_eq!(
        (config.nodes["b1"].ip(), config.nodes["c1"].ip()),
        (host(101), host(100))
    );
    // Planned roles never move: the plan decides.
    let planned: BTreeMap<String, Ipv4Addr> = [("web1".to_string(), host(150))].into();
    let default = resolve::resolve(&crate::config::shipped::default_config(), &planned).unwrap();
    assert_eq!(default.nodes["web1"].ip(), host(21));
}

#[test]
fn a_subnet_with_host_bits_set_is_refused_with_its_network() {
    assert_error_at(
        "[network]\nsubnet = \"172.16.0.5/24\"\n",
        (2, 10),
        &["network.subnet", "172.16.0.0/24"],
    );
}

#[test]
fn a_subnet_on_loopback_is_refused() {
    assert_error_at(
        "[network]\nsubnet = \"127.0.0.0/24\"\nhost_ip = \"127.0.0.254\"\n",
        (2, 10),
        &["network.subnet", "loopback"],
    );
}

#[test]
fn a_public_address_inside_the_internal_subnet_is_refused() {
    assert_error_at(
        "[network]\nsubnet = \"172.16.0.0/24\"\npublic_ip = \"172.16.0.200/24\"\npublic_gateway = \"172.16.0.199\"\n",
        (3, 13),
        &["network.public_ip", "172.16.0.0/24"],
    );
}

#[test]
fn allow_rules_must_name_existing_roles() {
    let text = format!(
        "{SLEEPER}[[roles.sleeper.allow]]\nfrom = [\"web\", \"nosuchrole\"]\nports = [80]\n"
    );
    assert_error_at(&text, (12, 8), &["roles.sleeper.allow.from", "nosuchrole"]);
    // Every node, an inline role and a shipped one are all fine.
    let fine = format!(
        "{SLEEPER}[[roles.sleeper.allow]]\nfrom = [\"*\", \"sleeper\", \"monitor\"]\nports = [80]\n"
    );
    parse_text(&fine).unwrap();
}

#[test]
fn two_volumes_of_a_role_on_one_path_are_refused() {
    let text = format!(
        "{SLEEPER}[[roles.sleeper.volume]]\nname = \"a\"\npath = \"/srv/data\"\n[[roles.sleeper.volume]]\nname = \"b\"\npath = \"/srv/data/\"\n"
    );
    assert_error_at(&text, (16, 8), &["roles.sleeper.volume.b.path", "volume a"]);
}

#[test]
fn environment_names_are_identifiers() {
    for bad in ["", "A=B", "1ST", "WITH SPACE", "DASH-ED", "NUL\\u0000"] {
        let text = SLEEPER.replace(
            "command = [\"sleep\", \"1000000\"]\n",
            &format!("command = [\"sleep\", \"1000000\"]\nenv = {{ \"{bad}\" = \"x\" }}\n"),
        );
        let error = first_error(&text);
        assert_eq!((error.line, error.column), (11, 9), "{bad}: {error:?}");
        assert!(
            error.message.contains("roles.sleeper.process.sleep.env"),
            "{bad}: {error:?}"
        );
    }
    let fine = SLEEPER.replace(
        "command = [\"sleep\", \"1000000\"]\n",
        "command = [\"sleep\", \"1000000\"]\nenv = { PATH = \"/bin\", _x1 = \"y\", lower_case = \"\" }\n",
    );
    parse_text(&fine).unwrap();
}

#[test]
fn the_bridge_and_subnet_are_checked_against_the_host_s_links_and_routes() {
    let text = |bridge: &str| {
        format!("{SLEEPER}[network]\nbridge = \"{bridge}\"\nsubnet = \"10.9.0.0/24\"\nhost_ip = \"10.9.0.254\"\n")
    };
    let route = |destination: &str, device: &str| HostRoute {
        destination: Cidr::parse(destination).unwrap(),
        device: device.into(),
    };
    let link = |name: &str, bridge: bool| HostLink {
        name: name.into(),
        bridge,
    };
    let mut host = HostView {
        // The default route, and the agent's own bridge with the route of its last run.
        routes: vec![route("0.0.0.0/0", "eth0"), route("10.9.0.0/24", "msx0")],
        links: vec![link("lo", false), link("eth0", false), link("msx0", true)],
    };
    let problems = |text: &str, host: &HostView| {
        let source = Source::new("agent.toml", text);
        check_against_host(&source, &parse(&source).unwrap(), host)
    };
    assert_eq!(problems(&text("msx0"), &host), []);
    assert_eq!(problems(&text("msnew0"), &host).len(), 1);

    host.routes.push(route("10.0.0.0/8", "tun0"));
    let found = problems(&text("msx0"), &host);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].line, found[0].column), (13, 10), "{found:?}");
    assert_eq!(
        found[0].message,
        "network.subnet: 10.9.0.0/24 overlaps the host's route to 10.0.0.0/8 on tun0"
    );

    host.routes.pop();
    for interface in ["eth0", "lo"] {
        let found = problems(&text(interface), &host);
        assert_eq!((found[0].line, found[0].column), (12, 10), "{found:?}");
        assert_eq!(
            found[0].message,
            format!("network.bridge: `{interface}` is an existing interface that is not a bridge")
        );
    }
}

#[test]
fn a_disk_limit_is_a_size_set_by_the_role_or_the_node() {
    let config = parse_text(
        r#"
[nodes.web1]
role = "web"
[nodes.web2]
role = "web"
[nodes.web2.resources]
disk = "512M"
[nodes.fw1]
role = "fw"
"#,
    )
    .unwrap();
    assert_eq!(
        config.nodes["web1"].definition.resources.disk_bytes,
        Some(10 << 30)
    );
    assert_eq!(
        config.nodes["web2"].definition.resources.disk_bytes,
        Some(512 << 20)
    );
    assert_eq!(
        config.nodes["web2"].definition.resources.memory_bytes,
        Some(1 << 30),
        "kept from roles/web.toml"
    );
    assert_eq!(
        config.nodes["fw1"].definition.resources.disk_bytes,
        Some(256 << 20)
    );
    let error = parse_text("[nodes.web1]\nrole = \"web\"\n[nodes.web1.resources]\ndisk = \"0\"\n[roles.web.resources]\ndisk = \"1.5G\"\n")
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("nodes.web1.resources.disk: must be more than 0"),
        "{text}"
    );
    assert!(
        text.contains("roles.web.resources.disk: `1.5G` is not a size"),
        "{text}"
    );
}

#[test]
fn a_role_may_not_trace_its_init() {
    let error = first_error(
        "[nodes.s1]\nrole = \"tracer\"\n[roles.tracer]\nimage = \"busybox\"\ncapabilities = [\"CHOWN\", \"SYS_PTRACE\"]\n[[roles.tracer.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1\"]\n",
    );
    assert_eq!((error.line, error.column), (5, 16), "{error}");
    assert!(
        error
            .message
            .starts_with("roles.tracer.capabilities: `SYS_PTRACE` is refused: it would let"),
        "{error}"
    );
}

use super::*;
use crate::config::ConfigError;

/// A host with lb1, web1, web2 and db1; role lb renders `lb.cfg` from `templates/` beside the
/// config file, with `template` as its text.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(template: &str, role_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/lb.cfg"), template).unwrap();
        let config = format!(
            r#"
[host]
name = "h1"
state_dir = "/tmp/ms"
[nodes.lb1]
role = "lb"
[nodes.web1]
role = "web"
[nodes.web2]
role = "web"
[nodes.db1]
role = "db"
[[roles.lb.template]]
source = "lb.cfg"
dest = "/etc/lb/lb.cfg"
{role_extra}
"#
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        Setup { dir }
    }

    /// The configuration with its templates checked, as `config check` and `run` load it.
    fn load(&self) -> Result<Config, ConfigError> {
        let config = crate::config::load(Some(&self.dir.path().join("agent.toml")))?;
        let problems = super::check(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn template_file(&self) -> String {
        self.dir
            .path()
            .join("templates/lb.cfg")
            .display()
            .to_string()
    }
}

/// The named nodes running and healthy.
fn running(names: &[&str]) -> Running {
    names
        .iter()
        .map(|n| (n.to_string(), "healthy".to_string()))
        .collect()
}

const BACKENDS: &str = "# {{ node.name }} {{ node.ip }} {{ node.role }}\n\
{% for n in nodes if n.role == \"web\" %}\n\
server {{ n.name }} {{ n.ip }}:80 check\n\
{% endfor %}\n";

#[test]
fn nodes_lists_the_running_ones_and_node_is_the_renderer() {
    let setup = Setup::new(BACKENDS, "");
    let config = setup.load().unwrap();
    let lb1 = &config.nodes["lb1"];
    let files = render_node(&config, lb1, &running(&["lb1", "web2", "db1"])).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].dest, "/etc/lb/lb.cfg");
    assert_eq!(
        files[0].text,
        format!(
            "# lb1 {} lb\nserver web2 {}:80 check\n",
            lb1.ip(),
            config.nodes["web2"].ip()
        )
    );
    assert_eq!(files[0].reload, None);
    let both = render_node(&config, lb1, &running(&["web1", "web2"])).unwrap();
    assert!(both[0].text.contains("server web1 ") && both[0].text.contains("server web2 "));
    // A node without templates renders nothing.
    let mut bare = config.nodes["web1"].clone();
    bare.definition.templates.clear();
    assert!(render_node(&config, &bare, &running(&[]))
        .unwrap()
        .is_empty());
}

#[test]
fn context_carries_every_node_its_ports_and_the_host() {
    let setup = Setup::new("x", "");
    let config = setup.load().unwrap();
    let context = Context::new(&config, &config.nodes["lb1"], &running(&["db1"]));
    let names: Vec<&str> = context.all_nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["db1", "lb1", "web1", "web2"]);
    let running_names: Vec<&str> = context.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(running_names, ["db1"]);
    let db1 = &context.nodes[0];
    assert_eq!(db1.ports, [3306, 6379, 6380]);
    assert_eq!(db1.allow[0].from, ["web"]);
    assert!(db1.running);
    assert_eq!(db1.health, "healthy");
    assert!(!context.node.running);
    assert_eq!(context.node.health, "unknown");
    assert_eq!(context.node.ports, [80, 443, 8404]);
    assert_eq!(context.host.name, "h1");
    assert_eq!(context.host.ip, config.network.host_ip.to_string());
}

#[test]
fn each_running_node_carries_its_health() {
    let setup = Setup::new(
        "{% for n in nodes %}{{ n.name }}={{ n.health }}\n{% endfor %}",
        "",
    );
    let config = setup.load().unwrap();
    let mut up = running(&["web1", "web2", "db1"]);
    up.insert("web2".into(), "unhealthy".into());
    up.insert("db1".into(), "starting".into());
    let files = render_node(&config, &config.nodes["lb1"], &up).unwrap();
    assert_eq!(
        files[0].text,
        "db1=starting\nweb1=healthy\nweb2=unhealthy\n"
    );
    let context = Context::new(&config, &config.nodes["lb1"], &up);
    let health: Vec<(&str, &str)> = context
        .all_nodes
        .iter()
        .map(|n| (n.name.as_str(), n.health.as_str()))
        .collect();
    assert_eq!(
        health,
        [
            ("db1", "starting"),
            ("lb1", "unknown"),
            ("web1", "healthy"),
            ("web2", "unhealthy")
        ]
    );
}

#[test]
fn a_syntax_error_is_refused_at_load_with_the_template_file_and_line() {
    let setup = Setup::new("global\n{% for n in nodes %}\nserver {{ n.name }\n", "");
    let error = setup.load().expect_err("syntax error accepted");
    let diagnostic = &error.diagnostics()[0];
    assert_eq!(diagnostic.file, setup.template_file());
    assert_eq!(diagnostic.line, 3, "{diagnostic}");
    assert!(
        diagnostic
            .message
            .starts_with("roles.lb.template `lb.cfg`: syntax error"),
        "{diagnostic}"
    );
    assert_eq!(error.diagnostics().len(), 1, "{error}");
}

#[test]
fn an_unknown_variable_or_attribute_is_an_error_not_an_empty_string() {
    let setup = Setup::new("a\nb {{ backends }}\n", "");
    let diagnostic = setup.load().unwrap_err().diagnostics()[0].clone();
    assert_eq!((diagnostic.line, diagnostic.column), (2, 6), "{diagnostic}");
    assert!(diagnostic.message.contains("undefined"), "{diagnostic}");

    // Inside a loop that runs only while nodes are up: caught with every node running.
    let setup = Setup::new("{% for n in nodes %}\n{{ n.adress }}\n{% endfor %}\n", "");
    let diagnostic = setup.load().unwrap_err().diagnostics()[0].clone();
    assert_eq!(diagnostic.line, 2, "{diagnostic}");
    assert!(diagnostic.to_string().contains("lb.cfg:2:"), "{diagnostic}");
}

#[test]
fn render_errors_at_run_time_carry_role_file_and_line() {
    let setup = Setup::new("ok\n{{ node.name }}\n", "");
    let mut config = setup.load().unwrap();
    config.templates.get_mut("lb.cfg").unwrap().text = "ok\n\n{{ node.nope }}\n".into();
    let error = render_node(&config, &config.nodes["lb1"], &running(&[])).unwrap_err();
    assert_eq!(error.role, "lb");
    assert_eq!(error.source_name, "lb.cfg");
    assert_eq!(error.file, setup.template_file());
    assert_eq!(error.line, 3);
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:3:", setup.template_file())),
        "{error}"
    );
}

#[test]
fn a_missing_template_names_where_it_was_looked_for() {
    let setup = Setup::new("x", "");
    std::fs::remove_file(setup.dir.path().join("templates/lb.cfg")).unwrap();
    let error = setup.load().unwrap_err().to_string();
    assert!(
        error.contains("roles.lb.template: no template `lb.cfg`"),
        "{error}"
    );
    assert!(error.contains("templates/lb.cfg"), "{error}");
}

#[test]
fn reload_names_a_process_of_the_role_and_a_catchable_signal() {
    let setup = Setup::new(
        "x",
        "reload_process = \"haproxy\"\nreload_signal = \"USR2\"\n",
    );
    let config = setup.load().unwrap();
    let reload = config.nodes["lb1"].definition.templates[0]
        .reload
        .clone()
        .unwrap();
    assert_eq!(
        (reload.process.as_str(), reload.signal.as_str()),
        ("haproxy", "SIGUSR2")
    );

    let default_signal = Setup::new("x", "reload_process = \"haproxy\"\n");
    let reload = default_signal.load().unwrap().nodes["lb1"]
        .definition
        .templates[0]
        .reload
        .clone()
        .unwrap();
    assert_eq!(reload.signal, "SIGHUP");

    for (extra, expected) in [
        (
            "reload_process = \"httpd\"\n",
            "reload_process `httpd` is not one of",
        ),
        (
            "reload_process = \"haproxy\"\nreload_signal = \"KILL\"\n",
            "cannot be caught",
        ),
        (
            "reload_process = \"haproxy\"\nreload_signal = \"BOO\"\n",
            "not a signal name",
        ),
        ("reload_signal = \"HUP\"\n", "name the process to signal"),
    ] {
        let error = Setup::new("x", extra).load().unwrap_err().to_string();
        assert!(error.contains(expected), "{extra}: {error}");
    }
}

#[test]
fn sources_are_relative_and_dests_unique() {
    for (extra, expected) in [
        (
            "[[roles.lb.template]]\nsource = \"../etc/passwd\"\ndest = \"/x\"\n",
            "must be a relative path below templates/",
        ),
        (
            "[[roles.lb.template]]\nsource = \"lb.cfg\"\ndest = \"/etc/lb/lb.cfg\"\n",
            "a second template renders to this path",
        ),
        (
            "[[roles.lb.template]]\nsource = \"lb.cfg\"\ndest = \"/proc/x\"\n",
            "inside /proc",
        ),
        (
            "[[roles.lb.template]]\nsource = \"lb.cfg\"\ndest = \"/etc/hosts\"\n",
            "written by the agent",
        ),
        (
            "[[roles.lb.template]]\nsource = \"lb.cfg\"\ndest = \"/run/magestack\"\n",
            "overlaps /run/magestack/templates",
        ),
    ] {
        let error = Setup::new("x", extra).load().unwrap_err().to_string();
        assert!(error.contains(expected), "{extra}: {error}");
    }
}

#[test]
fn the_shipped_monitrc_checks_every_other_node_by_the_ports_its_role_serves() {
    let config = crate::config::load(None).unwrap();
    let monitor = &config.nodes["monitor1"];
    let files = render_node(&config, monitor, &running(&["web1"])).unwrap();
    assert_eq!(files[0].dest, "/etc/monit/magestack.rc");
    let reload = files[0].reload.as_ref().unwrap();
    assert_eq!((&*reload.process, &*reload.signal), ("monit", "SIGHUP"));
    let rc = &files[0].text;
    assert!(rc.contains("set httpd port 2812"), "{rc}");
    for (name, ports) in [
        ("lb1", &[80, 8404][..]),
        ("web1", &[80]),
        ("web2", &[80]),
        ("db1", &[3306, 6379, 6380]),
        ("mail1", &[25]),
        ("acc1", &[22]),
    ] {
        let ip = config.nodes[name].ip();
        let check = format!("check host {name} with address {ip}\n");
        let at = rc.find(&check).unwrap_or_else(|| panic!("{check}: {rc}"));
        let block = rc[at + check.len()..].split("\n\n").next().unwrap();
        let checked: Vec<u16> = block
            .lines()
            .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
            .collect();
        assert_eq!(checked, ports, "{name}: {block}");
    }
    // Nothing to check on fw1 (it serves nothing) or on monitor1 itself; the file does not
    // change when nodes stop (no reload of monit for that).
    assert!(
        !rc.contains("host fw1 ") && !rc.contains("host monitor1 "),
        "{rc}"
    );
    let none = render_node(&config, monitor, &running(&[])).unwrap();
    assert_eq!(none[0].text, *rc);
}

#[test]
fn install_replaces_files_by_rename_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = |text: &str| Rendered {
        dest: "/etc/lb/lb.cfg".into(),
        text: text.into(),
        reload: None,
    };
    install(dir.path(), &[file("one\n")], None).unwrap();
    let path = dir.path().join("etc/lb/lb.cfg");
    let before = std::fs::metadata(&path).unwrap();
    install(dir.path(), &[file("two\n")], None).unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&before),
        std::os::unix::fs::MetadataExt::ino(&after),
        "not replaced by rename"
    );
    let dests = vec!["/etc/lb/lb.cfg".to_string(), "/missing".to_string()];
    let back = installed(dir.path(), &dests);
    assert_eq!(back["/etc/lb/lb.cfg"], "two\n");
    assert_eq!(back["/missing"], "");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("etc/lb"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["lb.cfg"], "a temp file is left");
}

#[test]
fn the_acc_templates_render_the_configured_keys() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIm9Z0ZmD3Q ops@example";
    let text = format!("[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"{key}\"]\n");
    let config = crate::config::parse(&crate::config::Source::new("agent.toml", text)).unwrap();
    let rendered =
        render_node(&config, &config.nodes["acc1"], &Default::default()).expect("rendered");
    let file = |dest: &str| {
        rendered
            .iter()
            .find(|r| r.dest == dest)
            .unwrap_or_else(|| panic!("{dest} not rendered"))
            .text
            .clone()
    };
    assert!(file("/etc/ssh/authorized_keys/root").contains(&format!("\n{key}\n")));
    assert!(!file("/etc/ssh/authorized_keys/www-data").contains("ssh-"));
    assert!(file("/etc/ssh/sshd_config").contains("AuthorizedKeysFile /etc/ssh/authorized_keys/%u"));
}

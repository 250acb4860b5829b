//! Role templates: rendered from the node registry into the node at `dest`, re-rendered when
//! nodes come and go, the reload signal sent only where the rendering changed, and a broken
//! template refused at reload without changing anything.

mod common;

use std::time::Duration;

use common::{wait_for, TestHost, WEB_STAND_IN};

/// A process that appends a line to /tmp/hups for every SIGHUP it gets.
const HUP_COUNTER: &str =
    r#"["sh", "-c", "trap 'echo hup >> /tmp/hups' HUP; while true; do sleep 1 & wait; done"]"#;

/// lb lists every running web node; db lists the running db nodes (which never changes here).
/// Both count their reload signals. lb and db run from busybox here, not their real images.
fn config(web_nodes: &[&str]) -> String {
    let mut text = String::from(
        "[nodes.lb1]\nrole = \"lb\"\n[nodes.db1]\nrole = \"db\"\n[roles.lb]\nimage = \"busybox\"\n[roles.db]\nimage = \"busybox\"\n",
    );
    for web in web_nodes {
        text.push_str(&format!("[nodes.{web}]\nrole = \"web\"\n"));
    }
    for (role, source) in [("lb", "backends.cfg"), ("db", "dbs.cfg")] {
        text.push_str(&format!(
            r#"
[[roles.{role}.process]]
name = "counter"
command = {HUP_COUNTER}
[[roles.{role}.template]]
source = "{source}"
dest = "/etc/{role}/{source}"
reload_process = "counter"
"#
        ));
    }
    text.push_str(WEB_STAND_IN);
    text
}

const BACKENDS: &str = "# rendered for {{ node.name }} ({{ node.ip }})\n\
{% for n in nodes if n.role == \"web\" %}\n\
server {{ n.name }} {{ n.ip }}:80 check\n\
{% endfor %}\n";

const DBS: &str =
    "{% for n in nodes if n.role == \"db\" %}\n{{ n.name }} {{ n.ip }}\n{% endfor %}\n";

fn write_template(host: &TestHost, name: &str, text: &str) {
    let dir = host.dir.join("templates");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn cat(host: &TestHost, node: &str, path: &str) -> String {
    host.exec_stdout(node, &["cat", path])
}

/// How many SIGHUPs the node's counter has seen.
fn hups(host: &TestHost, node: &str) -> usize {
    let output = host.exec(node, &["sh", "-c", "cat /tmp/hups 2>/dev/null || true"]);
    String::from_utf8_lossy(&output.stdout).lines().count()
}

fn ip(host: &TestHost, node: &str) -> String {
    host.node(node)["ip"].as_str().unwrap().to_string()
}

/// Waits for the count to reach `expected`, then makes sure no further signal follows.
fn assert_hups(host: &TestHost, node: &str, expected: usize) {
    wait_for(
        &format!("{expected} reloads of {node}"),
        Duration::from_secs(10),
        || hups(host, node) >= expected,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hups(host, node), expected, "{node} reloaded more than once");
}

#[test]
fn templates_follow_the_registry_and_reload_only_what_changed() {
    let mut host = TestHost::new("templates", &config(&[]));
    write_template(&host, "backends.cfg", BACKENDS);
    write_template(&host, "dbs.cfg", DBS);
    host.cli(&["config", "check"]);
    host.start_daemon();
    for node in ["lb1", "db1"] {
        host.wait_node_state(node, "running");
    }
    let lb_ip = ip(&host, "lb1");
    let db_ip = ip(&host, "db1");

    // Rendered at dest, a link into the read-only rendered files.
    let backends = "/etc/lb/backends.cfg";
    assert_eq!(
        cat(&host, "lb1", backends),
        format!("# rendered for lb1 ({lb_ip})\n")
    );
    assert_eq!(
        host.exec_stdout("lb1", &["readlink", backends]).trim(),
        "/run/magestack/templates/etc/lb/backends.cfg"
    );
    let write = host.exec("lb1", &["sh", "-c", "echo x > /etc/lb/backends.cfg"]);
    assert!(!write.status.success(), "the rendered file is writable");
    let dbs = cat(&host, "db1", "/etc/db/dbs.cfg");
    assert_eq!(dbs, format!("db1 {db_ip}\n"));
    assert_eq!(hups(&host, "lb1"), 0);

    // A web node added by reload: lb1 lists it once it runs, and reloads exactly once.
    host.write_config(&config(&["web1"]));
    host.cli(&["reload"]);
    host.wait_node_state("web1", "running");
    let web1 = format!("server web1 {}:80 check\n", ip(&host, "web1"));
    wait_for("lb1 to list web1", Duration::from_secs(10), || {
        cat(&host, "lb1", backends).contains(&web1)
    });
    assert_hups(&host, "lb1", 1);

    host.write_config(&config(&["web1", "web2"]));
    host.cli(&["reload"]);
    host.wait_node_state("web2", "running");
    let web2 = format!("server web2 {}:80 check\n", ip(&host, "web2"));
    wait_for("lb1 to list web2", Duration::from_secs(10), || {
        cat(&host, "lb1", backends).contains(&web2)
    });
    assert_eq!(
        cat(&host, "lb1", backends),
        format!("# rendered for lb1 ({lb_ip})\n{web1}{web2}")
    );
    assert_hups(&host, "lb1", 2);

    // A stopped web node leaves the list.
    host.cli(&["stop", "web1"]);
    wait_for("lb1 to drop web1", Duration::from_secs(10), || {
        !cat(&host, "lb1", backends).contains("web1")
    });
    assert_hups(&host, "lb1", 3);

    // db1's rendering never changed: it was never told to reload.
    assert_eq!(cat(&host, "db1", "/etc/db/dbs.cfg"), dbs);
    assert_eq!(hups(&host, "db1"), 0);

    // A broken template is refused with its file and line, and nothing changes.
    let pids: Vec<i32> = ["lb1", "db1", "web2"]
        .iter()
        .map(|node| host.node_pid(node))
        .collect();
    write_template(
        &host,
        "backends.cfg",
        "global\n{% for n in nodes %}\nserver {{ n.name }\n{% endfor %}\n",
    );
    host.write_config(&config(&["web1", "web2", "web3"]));
    let template_file = host.dir.join("templates/backends.cfg");
    for command in [&["reload"][..], &["config", "check"][..]] {
        let output = host.try_cli(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{command:?} accepted a broken template"
        );
        assert!(
            stderr.contains(&format!("{}:3:", template_file.display())),
            "{command:?}: {stderr}"
        );
        assert!(
            stderr.contains("roles.lb.template `backends.cfg`: syntax error"),
            "{command:?}: {stderr}"
        );
    }
    let after: Vec<i32> = ["lb1", "db1", "web2"]
        .iter()
        .map(|node| host.node_pid(node))
        .collect();
    assert_eq!(pids, after, "a node was restarted");
    assert!(host.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["name"] != "web3"));
    assert_eq!(
        cat(&host, "lb1", backends),
        format!("# rendered for lb1 ({lb_ip})\n{web2}")
    );
    assert_eq!(hups(&host, "lb1"), 3);

    // A new daemon adopts the nodes and compares with what is installed: no reload for an
    // unchanged rendering, one when web1 comes back.
    write_template(&host, "backends.cfg", BACKENDS);
    host.write_config(&config(&["web1", "web2"]));
    host.kill_daemon(libc::SIGKILL);
    host.start_daemon();
    host.wait_node_state("lb1", "running");
    assert_hups(&host, "lb1", 3);
    host.cli(&["start", "web1"]);
    wait_for("lb1 to list web1 again", Duration::from_secs(10), || {
        cat(&host, "lb1", backends).contains(&web1)
    });
    assert_hups(&host, "lb1", 4);
    assert_eq!(hups(&host, "db1"), 0);
}

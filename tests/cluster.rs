//! The cluster from the outside: a real `redis-server` on a loopback port and several
//! switchyard nodes pointed at it. Membership so far: nodes see each other, a second live
//! node with a name already held is refused, and a node goes on alone — and says so — while
//! Redis is away.

mod common;

use common::{ctl, Daemon, Tool, BIN};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `redis-server` on a loopback port, nothing saved to disk.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        Tool::RedisServer.require();
        let mut r = Redis {
            port: common::free_port(),
            child: None,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        common::wait_for_port(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_secs(10),
        );
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn section(&self, node: &str) -> String {
        format!(
            "[cluster]\nredis = \"redis://127.0.0.1:{}/0\"\nnode = \"{node}\"\nkey_prefix = \"test\"\n",
            self.port
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

fn view(d: &Daemon) -> Value {
    d.get_json("/api/v1/cluster")
}

fn names(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

fn wait_view(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    common::poll_until(
        what,
        Duration::from_secs(20),
        || vec![view(d)],
        |v| f(&v[0]),
    )
    .remove(0)
}

#[test]
fn nodes_see_each_other_a_held_name_is_refused_and_a_node_goes_on_alone_without_redis() {
    let mut redis = Redis::start();
    let a = Daemon::start(&redis.section("a"));
    let b = Daemon::start(&redis.section("b"));
    let seen = wait_view(&a, "both nodes", |v| names(v) == ["a", "b"]);
    assert_eq!(seen["node"], "a");
    assert_eq!(seen["redis"]["up"], true);
    assert_eq!(
        seen["redis"]["url"],
        format!("redis://127.0.0.1:{}/0", redis.port)
    );
    for n in seen["nodes"].as_array().unwrap() {
        assert!(n["last_heartbeat"].as_str().unwrap().ends_with('Z'), "{n}");
        assert!(n["queues"].is_u64() && n["connections"].is_u64(), "{n}");
    }
    wait_view(&b, "b sees both", |v| names(v) == ["a", "b"]);
    a.wait_metric("switchyard_cluster_nodes", "", 2.0);
    a.wait_metric("switchyard_cluster_up", "", 1.0);
    let (ok, out, err) = ctl(&a, &["cluster"]);
    assert!(ok, "{err}");
    assert!(out.contains("up") && out.contains("b"), "{out}");

    // A third node calling itself "a" while a lives is refused at start, saying why.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:{}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n{}",
            dir.path().join("data").display(),
            common::free_port(),
            common::free_port(),
            redis.section("a")
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("held by another live node"), "{stderr}");

    // Redis goes away: the nodes go on alone and say so; it comes back: they see each other.
    redis.down();
    wait_view(&a, "Redis seen down", |v| v["redis"]["up"] == false);
    a.wait_metric("switchyard_cluster_up", "", 0.0);
    let (ok, out, _) = ctl(&a, &["cluster"]);
    assert!(ok && out.contains("DOWN"), "{out}");
    assert!(a.log().contains("Redis does not answer"), "{}", a.log());
    redis.up();
    wait_view(&a, "Redis back, both nodes", |v| {
        v["redis"]["up"] == true && names(v) == ["a", "b"]
    });

    // A node that stops leaves the list at once.
    drop(b);
    wait_view(&a, "b gone", |v| names(v) == ["a"]);
}

#[test]
fn without_a_cluster_a_node_is_alone() {
    let d = Daemon::start("");
    let v = view(&d);
    assert_eq!(v["redis"]["url"], Value::Null);
    assert_eq!(v["nodes"], serde_json::json!([]));
    let (ok, out, _) = ctl(&d, &["cluster"]);
    assert!(ok && out.contains("a single node"), "{out}");
}

//! Recipients of one message at one site leave in one SMTP transaction (KumoMTA's
//! `max_recipients_per_batch`, default 100), and each is settled by its own RCPT reply.
//! `switchyard sink` records each transaction with its recipients; dnsmasq gives the MX.

mod common;

use common::{swaks, world};
use serde_json::Value;
use std::time::Duration;

fn rcpts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}@batch.test")).collect()
}

fn send_one(w: &common::World, to: &[String]) {
    let (ok, out) = swaks(
        w.d.smtp,
        &["--to", &to.join(","), "--header", "X-Tenant: acme"],
    );
    assert!(ok && out.contains("250 2.0.0 Ok: queued as"), "{out}");
}

fn of<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["type"] == kind).collect()
}

#[test]
fn fifty_recipients_at_one_site_leave_in_one_transaction() {
    let w = world(&[("batch.test", "mx.batch.test")], "", "", "");
    let to = rcpts(50);
    send_one(&w, &to);
    let ev =
        w.d.wait_events("50 deliveries", |ev| of(ev, "Delivery").len() >= 50);
    let got = w.sink.received();
    assert_eq!(got.len(), 1, "one transaction: {got:?}");
    let sent: Vec<&str> = got[0]["rcpts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(sent, to, "50 RCPTs, in envelope order");
    let mut delivered: Vec<&str> = of(&ev, "Delivery")
        .iter()
        .map(|d| d["recipient"].as_str().unwrap())
        .collect();
    delivered.sort();
    let mut want: Vec<&str> = to.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(delivered, want, "one Delivery record per recipient");
}

#[test]
fn each_recipient_of_a_batch_is_settled_by_its_own_reply() {
    // The sink refuses the first RCPT it sees; the other two are accepted.
    let responses = "[[rule]]\nstage = \"rcpt\"\nrecipient_domain = \"batch.test\"\nlimit = 1\ncode = 550\nmsg = \"5.1.1 No such user here\"\n";
    let w = world(&[("batch.test", "mx.batch.test")], responses, "", "");
    let to = rcpts(3);
    send_one(&w, &to);
    let ev = w.d.wait_events("a bounce and two deliveries", |ev| {
        of(ev, "Bounce").len() == 1 && of(ev, "Delivery").len() == 2
    });
    let bounce = of(&ev, "Bounce")[0];
    assert_eq!(bounce["recipient"], "u0@batch.test");
    assert_eq!(bounce["response"]["code"], 550);
    assert_eq!(bounce["response"]["enhanced"], "5.1.1");
    for d in of(&ev, "Delivery") {
        assert_eq!(d["response"]["code"], 250, "{d}");
    }
    let got = w.sink.received();
    let transactions: Vec<&Value> = got.iter().filter(|r| r["code"] == 250).collect();
    assert_eq!(transactions.len(), 1, "{got:?}");
    assert_eq!(
        transactions[0]["rcpts"],
        serde_json::json!(["u1@batch.test", "u2@batch.test"])
    );
}

#[test]
fn max_recipients_per_batch_splits_a_message() {
    let w = world(
        &[("batch.test", "mx.batch.test")],
        "",
        "max_recipients_per_batch = 2\n",
        "",
    );
    send_one(&w, &rcpts(5));
    let got = w.sink.wait("5 recipients", Duration::from_secs(20), |g| {
        g.iter()
            .map(|r| r["rcpts"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 5
    });
    let mut sizes: Vec<usize> = got
        .iter()
        .map(|r| r["rcpts"].as_array().unwrap().len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 2, 2], "{got:?}");
}

//! The external tools the tests drive, checked by the capability a test uses and named by
//! the Debian (or PyPI) package that brings it.
//!
//! `scripts/test.sh` installs every package listed here before it runs the suite. A test
//! that finds a capability missing anyway (someone ran `cargo test` on a bare machine) fails
//! at once with the package to install — never with a confusing protocol error, never a skip.

use std::process::{Command, Stdio};

/// One capability of an external tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// swaks itself (plain SMTP, PIPELINING).
    Swaks,
    /// swaks's STARTTLS: Perl's IO::Socket::SSL and Net::SSLeay.
    SwaksTls,
    /// swaks's AUTH: Perl's Authen::SASL.
    SwaksAuth,
    /// Python 3 with smtplib.
    Python,
    /// Python's aiosmtpd (tests/py/sink.py).
    Aiosmtpd,
    /// dkimpy with PyNaCl, the independent DKIM verifier (tests/py/dkim_verify.py).
    Dkimpy,
    /// The Standard Webhooks reference verifier (tests/py/webhook_receiver.py).
    StandardWebhooks,
    /// dnsmasq, the loopback DNS server of the MX tests.
    Dnsmasq,
    /// Prometheus's server.
    Prometheus,
    /// Prometheus's promtool.
    Promtool,
    /// Postfix's smtp-source and smtp-sink.
    PostfixTools,
    /// Redis (the cluster tests).
    RedisServer,
}

impl Tool {
    /// The check that proves the capability, as a command line.
    fn check(self) -> &'static [&'static str] {
        match self {
            Tool::Swaks => &["swaks", "--version"],
            Tool::SwaksTls => &["perl", "-MIO::Socket::SSL", "-MNet::SSLeay", "-e1"],
            Tool::SwaksAuth => &["perl", "-MAuthen::SASL", "-e1"],
            Tool::Python => &["python3", "-c", "import smtplib, ssl"],
            Tool::Aiosmtpd => &["python3", "-c", "import aiosmtpd.controller"],
            Tool::Dkimpy => &["python3", "-c", "import dkim, nacl.signing"],
            Tool::StandardWebhooks => &["python3", "-c", "import standardwebhooks"],
            Tool::Dnsmasq => &["dnsmasq", "--version"],
            Tool::Prometheus => &["prometheus", "--version"],
            Tool::Promtool => &["promtool", "--version"],
            Tool::PostfixTools => &["sh", "-c", "command -v smtp-source && command -v smtp-sink"],
            Tool::RedisServer => &["sh", "-c", "redis-server --version && redis-cli --version"],
        }
    }

    /// The capability, in words.
    fn describe(self) -> &'static str {
        match self {
            Tool::Swaks => "swaks",
            Tool::SwaksTls => "swaks's STARTTLS (Perl's IO::Socket::SSL and Net::SSLeay)",
            Tool::SwaksAuth => "swaks's AUTH (Perl's Authen::SASL)",
            Tool::Python => "python3 with smtplib and ssl",
            Tool::Aiosmtpd => "Python's aiosmtpd",
            Tool::Dkimpy => "Python's dkimpy with PyNaCl (Ed25519)",
            Tool::StandardWebhooks => "Python's standardwebhooks (the reference verifier)",
            Tool::Dnsmasq => "dnsmasq",
            Tool::Prometheus => "prometheus",
            Tool::Promtool => "promtool",
            Tool::PostfixTools => "Postfix's smtp-source and smtp-sink",
            Tool::RedisServer => "redis-server and redis-cli",
        }
    }

    /// What a person installs to get it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Swaks => "the Debian package swaks",
            Tool::SwaksTls => "the Debian packages libio-socket-ssl-perl and libnet-ssleay-perl",
            Tool::SwaksAuth => "the Debian package libauthen-sasl-perl",
            Tool::Python => "the Debian package python3",
            Tool::Aiosmtpd => "the PyPI package aiosmtpd (pip install aiosmtpd)",
            Tool::Dkimpy => "the PyPI packages dkimpy and pynacl (pip install dkimpy pynacl)",
            Tool::StandardWebhooks => {
                "the PyPI package standardwebhooks (pip install standardwebhooks)"
            }
            Tool::Dnsmasq => "the Debian package dnsmasq-base",
            Tool::Prometheus | Tool::Promtool => "the Debian package prometheus",
            Tool::PostfixTools => "the Debian package postfix",
            Tool::RedisServer => "the Debian packages redis-server and redis-tools",
        }
    }

    /// Panic with the package to install unless the capability is there.
    pub fn require(self) {
        let check = self.check();
        let ok = Command::new(check[0])
            .args(&check[1..])
            .env("PATH", path_with_sbin())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test needs {}, which is missing (`{}` failed): install {} \
             — scripts/test.sh installs it",
            self.describe(),
            check.join(" "),
            self.package()
        );
    }
}

/// `$PATH` with /usr/sbin and /sbin, where Debian puts dnsmasq.
pub fn path_with_sbin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/sbin:/sbin")
}

/// The capabilities a swaks command line uses.
pub fn swaks_needs(args: &[&str]) -> Vec<Tool> {
    let mut needs = vec![Tool::Swaks];
    if args.iter().any(|a| {
        matches!(
            *a,
            "-tls" | "--tls" | "-tlsc" | "--tlsc" | "-tlso" | "--tlso"
        )
    }) {
        needs.push(Tool::SwaksTls);
    }
    if args
        .iter()
        .any(|a| *a == "-a" || *a == "--auth" || a.starts_with("--auth"))
    {
        needs.push(Tool::SwaksAuth);
    }
    needs
}

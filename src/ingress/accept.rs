//! Accepting a message: the one path from "the client is done" to "spooled, fsynced, handed
//! to the tenant's actors, counted and logged", shared by the SMTP session and HTTP
//! injection (`POST /api/v1/inject`).

use super::Ingress;
use crate::logs::{LogRecord, RecordKind};
use crate::spool::{queue_name, Envelope, MessageId, NewMessage, QueueEntry, SpoolError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_actors::message::LoadedMessage;

/// A message ready to be stored: envelope, tenancy and the content as it will be sent
/// (tenancy headers removed, our Received header first).
pub struct Accepted {
    /// Envelope sender.
    pub sender: String,
    /// (recipient, lower-case domain).
    pub recipients: Vec<(String, String)>,
    /// Tenant.
    pub tenant: String,
    /// Campaign.
    pub campaign: Option<String>,
    /// Content with our Received header.
    pub message: Vec<u8>,
    /// Injecting client's address.
    pub client: String,
    /// Its HELO name (empty for HTTP).
    pub helo: String,
}

/// Why a message was not stored; nothing of it was kept.
#[derive(Debug)]
pub enum StoreError {
    /// The spool refused it (full disk, storage error).
    Spool(SpoolError),
    /// A `[[dkim]]` entry that applies could not sign it.
    Dkim(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Spool(e) => write!(f, "{e}"),
            StoreError::Dkim(e) => f.write_str(e),
        }
    }
}

impl StoreError {
    /// The SMTP reply: a transient failure, so the client tries again.
    pub fn reply(&self) -> (u16, &'static str) {
        match self {
            StoreError::Spool(SpoolError::DiskFull { .. }) => {
                (452, "4.3.1 Insufficient system storage")
            }
            StoreError::Spool(_) => (452, "4.3.1 Temporary spool failure, try again later"),
            StoreError::Dkim(_) => (451, "4.3.0 Cannot sign the message (DKIM), try again later"),
        }
    }
}

impl Ingress {
    /// Spool (fsynced before this returns), hand to the engine, count and log the Reception.
    /// On failure nothing was stored; the error comes back with the sender for the log.
    /// A message a `[[dkim]]` entry applies to is signed first, on the blocking pool.
    pub async fn store(&self, id: MessageId, mut a: Accepted) -> Result<(), (StoreError, String)> {
        let signers = self.dkim.current();
        let mut dkim = None;
        if !signers.is_empty() {
            let (tenant, mut message) = (a.tenant.clone(), std::mem::take(&mut a.message));
            let signed = tokio::task::spawn_blocking(move || {
                let r = signers.sign(&tenant, &mut message);
                (message, r)
            })
            .await;
            match signed {
                Ok((message, Ok(domains))) => {
                    a.message = message;
                    dkim = (!domains.is_empty()).then_some(domains);
                }
                Ok((_, Err(e))) => return Err((StoreError::Dkim(e.to_string()), a.sender)),
                Err(e) => return Err((StoreError::Dkim(format!("signer failed: {e}")), a.sender)),
            }
        }
        // New work waits while the event log is far behind (its writes never block).
        self.log.room().await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        let entries: Vec<QueueEntry> = a
            .recipients
            .iter()
            .map(|(rcpt, domain)| QueueEntry {
                recipient: rcpt.clone(),
                queue: queue_name(&a.tenant, a.campaign.as_deref(), domain),
                tenant: a.tenant.clone(),
                campaign: a.campaign.clone(),
                domain: domain.clone(),
                attempts: 0,
                due_ms: now_ms,
                created_ms: now_ms,
                held_ms: 0,
            })
            .collect();
        // Stored in wire form, so that no attempt copies it to stuff dots.
        let body = bytes::Bytes::from(super::data::wire_form(a.message));
        let size = body.len() as u64;
        let envelope = Envelope {
            sender: a.sender,
            recipients: a.recipients.into_iter().map(|(r, _)| r).collect(),
            tenant: a.tenant,
            campaign: a.campaign,
            received_ms: now_ms,
            client_addr: a.client.clone(),
            helo: a.helo,
            dot_stuffed: true,
        };
        let record = LogRecord {
            id: Some(id.to_string()),
            tenant: Some(envelope.tenant.clone()),
            campaign: envelope.campaign.clone(),
            sender: Some(envelope.sender.clone()),
            recipient: (envelope.recipients.len() == 1).then(|| envelope.recipients[0].clone()),
            recipients: Some(envelope.recipients.clone()),
            client: Some(a.client),
            size: Some(size),
            dkim,
            ..LogRecord::new(RecordKind::Reception)
        };
        // Rendered once: stored with the message (so that a crash before the log writes it
        // cannot lose it) and written by the log as it is.
        let reception = bytes::Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let hour = crate::logs::hour_of(&record.timestamp);
        let tenant = envelope.tenant.clone();
        let sender = envelope.sender.clone();
        // The content rides along to the first attempt (within the budget).
        let hot = self.hot.keep(LoadedMessage {
            sender: sender.clone(),
            body: body.clone(),
            stuffed: true,
        });
        let submissions: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut s = e.submission(crate::spool::entry_key(id, i as u32));
                s.message.hot = hot.clone();
                s
            })
            .collect();
        self.spool
            .store(NewMessage {
                id,
                envelope,
                body,
                entries,
                reception: reception.clone(),
            })
            .await
            .map_err(|e| (StoreError::Spool(e), sender))?;
        switchyard_actors::test_hooks::hop(id.0.as_bytes(), "spooled");
        // Filed before the engine has the message, so its Reception comes before any other
        // record of it.
        self.log.write_reception(crate::logs::Reception {
            id,
            line: reception,
            hour,
            spool: self.spool.clone(),
        });
        metrics::counter!("switchyard_received_total", "tenant" => tenant).increment(1);
        self.engine.submit(submissions).await;
        Ok(())
    }
}

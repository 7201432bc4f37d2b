//! switchyard's actors: TenantActor, CampaignActor, QueueActor (the scheduled queue),
//! ReadyQueueActor (egress source → site), ConnectionActor and ClassifierActor.
//!
//! They arrive with the delivery engine (issue 3); this crate holds the names that the
//! daemon's edges and the actors share.

/// The kind of event that changed a message's fate, as it appears in the `type` field of a
/// log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Accepted and spooled.
    Reception,
    /// Refused at injection.
    Rejection,
}

impl EventKind {
    /// The log name of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Reception => "Reception",
            EventKind::Rejection => "Rejection",
        }
    }
}

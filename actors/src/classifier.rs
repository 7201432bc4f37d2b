//! ClassifierActor: every SMTP reply a connection gets comes here.
//!
//! Today it answers with the reply's bounce class (for the log record and
//! `switchyard_bounce_class_total`); the automation rules of the shaping files (suspend a
//! tenant, a campaign or a source; throttle a site) hook in here with issue 4, which is why
//! even successful replies pass through.

use crate::bounce::BounceClassifier;
use crate::message::{QueueIdentity, Reply};
use actix::prelude::*;
use std::sync::Arc;

/// The classifier and, later, the automation state.
pub struct ClassifierActor {
    bounces: Arc<BounceClassifier>,
}

impl ClassifierActor {
    /// A classifier over compiled bounce rules.
    pub fn new(bounces: Arc<BounceClassifier>) -> Self {
        ClassifierActor { bounces }
    }
}

impl Actor for ClassifierActor {
    type Context = Context<Self>;
}

/// A reply seen by a connection, with whose mail it was about.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct ClassifyReply {
    /// The reply.
    pub reply: Reply,
    /// Whose message it answered.
    pub queue: Arc<QueueIdentity>,
    /// From which source.
    pub source: Arc<str>,
    /// To which site.
    pub site: Arc<str>,
}

impl Handler<ClassifyReply> for ClassifierActor {
    type Result = Option<String>;

    /// The bounce class of a failure reply; `None` for a success.
    fn handle(&mut self, msg: ClassifyReply, _: &mut Context<Self>) -> Option<String> {
        if msg.reply.is_success() {
            return None;
        }
        Some(self.bounces.classify(&msg.reply.match_text()).to_string())
    }
}

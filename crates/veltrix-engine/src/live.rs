//! What request handlers read while reloads may swap it: the routing table with its queues, the
//! dead-letter queues and the stats registry. Each is an `Arc` behind a lock held only to clone
//! the `Arc`, so a request sees one consistent version from start to end.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use veltrix_core::config::Router as TypeRouter;
use veltrix_log::Log;

use crate::deadletter::DeadLetters;
use crate::queues::Queue;
use crate::stats::Registry;

/// Routing: the type router and the queues it indexes (config file order).
pub(crate) struct Routing {
    pub(crate) router: TypeRouter,
    pub(crate) queues: Vec<Queue>,
}

/// The swappable parts of a running engine.
pub(crate) struct Live {
    routing: RwLock<Arc<Routing>>,
    dead_letters: RwLock<Arc<HashMap<String, Arc<DeadLetters>>>>,
    stats: RwLock<Option<Arc<Registry>>>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Live {
    pub(crate) fn new(routing: Routing) -> Live {
        Live {
            routing: RwLock::new(Arc::new(routing)),
            dead_letters: RwLock::new(Arc::default()),
            stats: RwLock::new(None),
        }
    }

    pub(crate) fn routing(&self) -> Arc<Routing> {
        read(&self.routing)
    }

    pub(crate) fn set_routing(&self, routing: Routing) {
        write(&self.routing, Arc::new(routing));
    }

    pub(crate) fn dead_letters(&self) -> Arc<HashMap<String, Arc<DeadLetters>>> {
        read(&self.dead_letters)
    }

    pub(crate) fn set_dead_letters(&self, dlqs: HashMap<String, Arc<DeadLetters>>) {
        write(&self.dead_letters, Arc::new(dlqs));
    }

    pub(crate) fn stats(&self) -> Option<Arc<Registry>> {
        read(&self.stats)
    }

    pub(crate) fn set_stats(&self, stats: Arc<Registry>) {
        write(&self.stats, Some(stats));
    }

    /// The log of the queue named `name`, if it is configured now.
    pub(crate) fn queue_log(&self, name: &str) -> Option<Log> {
        self.routing()
            .queues
            .iter()
            .find(|q| q.name == name)
            .map(|q| q.log.clone())
    }
}

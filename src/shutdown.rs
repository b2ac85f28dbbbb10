//! A one-shot stop signal shared by the service's tasks and threads.

use tokio::sync::watch;

/// Cloneable; [`Stop::wait`] completes once [`Stop::trigger`] was called.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }
}

impl Stop {
    /// Signals every waiter.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Whether the signal was given.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once the signal is given.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

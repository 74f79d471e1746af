//! `Shutdown`: one cancellation signal for every task of a node plus a tracker of those tasks,
//! so the node can stop accepting, ask every socket to close, and wait for them.
//!
//! Owns: the signal and the task set.  May use: tokio, tokio-util.  Never: decide close codes.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Clone, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for every tracked task, at most `grace`. Returns `false` on timeout.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

/// SIGTERM/SIGINT handlers, installed when this is made (so a signal that comes right
/// after the listening lines are printed is caught, not the default "terminate" action).
pub struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers now (inside a tokio runtime).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handlers = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { handlers }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
    pub async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.handlers {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C), installing the handlers when first
/// polled (use `Signals::install` to have them in place earlier).
pub async fn signal() {
    Signals::install().recv().await
}

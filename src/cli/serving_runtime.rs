//! The servers' own threads: the metrics API, the external scaler and the plain port run on a
//! runtime of their own, so whatever their clients send (a flood of TLS handshakes is all CPU)
//! takes its time from them and never from the controller's: sampling and decisions keep their
//! interval. Measured: 2,000 anonymous TLS clients made the policies' samples older than three
//! intervals while the servers shared the controller's threads (e2e/tests/metrics_api_flood.rs).

use std::future::Future;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct ServingRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ServingRuntime {
    /// Half the machine's cores (at least one) for the servers; the OS shares the rest fairly.
    pub fn start() -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads((cores / 2).max(1))
            .thread_name("levee-serving")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `serve` on the servers' runtime with `listener` moved onto it (its sockets are then
    /// driven by that runtime, not the controller's).
    pub fn spawn<F, Fut>(
        &self,
        listener: TcpListener,
        serve: F,
    ) -> std::io::Result<JoinHandle<Result<(), String>>>
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let listener = listener.into_std()?;
        let runtime = self.runtime.as_ref().expect("running until dropped");
        Ok(runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            serve(listener).await
        }))
    }
}

impl Drop for ServingRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

//! `streamscore serve`: the pipeline and the HTTP side port, wired to signals, around one
//! owner of the service's state (`state`).
//!
//! One cancellation token is the shutdown signal for everything (the mini-redis shape):
//! SIGTERM/SIGINT cancel it, the pipeline finishes the batch it holds, flushes and commits,
//! and the HTTP server stops taking requests.

pub mod http;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ServeArgs;
use crate::model::ModelStore;
use crate::online::feedback::{self, FeedbackConfig};
use crate::online::Overlay;
use crate::pipeline::{self, PipelineConfig};
use http::HttpState;
use state::ServiceState;

pub const ADMIN_TOKEN_ENV: &str = "STREAMSCORE_ADMIN_TOKEN";

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub pipeline: PipelineConfig,
    pub model: PathBuf,
    pub allow_kind_change: bool,
    pub http_addr: SocketAddr,
    pub admin_token: Option<String>,
    /// Online learning from a feedback topic (`crate::online`), when set.
    pub feedback: Option<FeedbackConfig>,
}

impl ServiceConfig {
    pub fn from_args(args: &ServeArgs) -> Self {
        Self {
            pipeline: args.pipeline_config(),
            model: args.model.clone(),
            allow_kind_change: args.allow_kind_change,
            http_addr: args.http_addr,
            admin_token: std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
            feedback: args.online.feedback_config(),
        }
    }
}

/// A running service: its HTTP address, its shared state, and the handle that stops it.
pub struct ServiceHandle {
    pub http_addr: SocketAddr,
    pub state: Arc<ServiceState>,
    pub shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl ServiceHandle {
    /// Waits for the service to end: `Ok` after a clean shutdown.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the service task panicked")?
    }

    /// Requests a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Loads the model, binds the side port and starts the pipeline. Returns once both run.
pub async fn start(config: ServiceConfig) -> anyhow::Result<ServiceHandle> {
    let store = ModelStore::open(&config.model, config.allow_kind_change)
        .with_context(|| format!("loading model {}", config.model.display()))?;
    let model = store.current();
    info!(kind = %model.kind(), version = %model.version, path = %config.model.display(), "model loaded");
    let state = ServiceState::new(store);
    let learner = match &config.feedback {
        Some(fb) => {
            let overlay = Arc::new(Overlay::new(&state.metrics));
            let online = feedback::restore(fb, &model, &overlay)?;
            // invariant: `state` was created just above and nothing else sets `online`.
            let _ = state.online.set(Arc::clone(&overlay));
            Some((fb.clone(), online, overlay))
        }
        None => None,
    };

    let listener = http::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP side port {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    info!(%http_addr, "HTTP side port listening");

    let shutdown = CancellationToken::new();
    let http_state = HttpState {
        state: Arc::clone(&state),
        admin_token: config.admin_token.map(Arc::from),
    };
    let http_stop = shutdown.child_token();
    let http_task = tokio::spawn(http::serve(listener, http_state, http_stop.clone()));

    // The learner stops with the service, and with the pipeline should that stop alone.
    let learner_stop = shutdown.child_token();
    let learner = match learner {
        Some((fb, online, overlay)) => {
            let (pipeline_config, service, stop) = (
                config.pipeline.clone(),
                Arc::clone(&state),
                learner_stop.clone(),
            );
            let thread = std::thread::Builder::new()
                .name("feedback".into())
                .spawn(move || {
                    let result =
                        feedback::run(&fb, &pipeline_config, &service, &overlay, online, &stop);
                    if let Err(e) = &result {
                        // Scoring on with learning stopped would serve stale lists silently.
                        service.health.fail(format!("feedback: {e:#}"));
                    }
                    result
                })
                .context("starting the feedback thread")?;
            Some(thread)
        }
        None => None,
    };

    let pipeline_state = Arc::clone(&state);
    let pipeline_stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let result = pipeline::run(config.pipeline, pipeline_state, pipeline_stop).await;
        learner_stop.cancel();
        let learned = match learner {
            Some(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| anyhow::anyhow!("joining the feedback thread: {e}"))
                .and_then(|joined| {
                    joined.unwrap_or_else(|_| Err(anyhow::anyhow!("the feedback thread panicked")))
                }),
            None => Ok(()),
        };
        // The side port lives exactly as long as the pipeline: a stopped pipeline must
        // not keep reporting ready.
        http_stop.cancel();
        match http_task.await {
            Ok(Err(e)) => warn!(error = %e, "HTTP side port"),
            Err(e) => warn!(error = %e, "HTTP side port task"),
            Ok(Ok(())) => {}
        }
        result.and(learned)
    });
    Ok(ServiceHandle {
        http_addr,
        state,
        shutdown,
        task,
    })
}

/// `streamscore serve`: runs until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let handle = start(ServiceConfig::from_args(args)).await?;
    let signals = tokio::spawn(handle_signals(
        Arc::clone(&handle.state),
        handle.shutdown.clone(),
    ));
    let result = handle.wait().await;
    signals.abort();
    result
}

#[cfg(unix)]
async fn handle_signals(state: Arc<ServiceState>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; stop the service with SIGKILL only");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let state = Arc::clone(&state);
                // A failed reload is already logged and counted; the old model stays.
                let _ = tokio::task::spawn_blocking(move || state.reload(None)).await;
            }
        }
    }
    info!("shutdown requested: finishing the batch in flight");
    shutdown.cancel();
}

#[cfg(not(unix))]
async fn handle_signals(_state: Arc<ServiceState>, shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

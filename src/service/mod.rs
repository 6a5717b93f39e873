//! `streamscore serve`: the pipeline and the HTTP side port, wired to signals, around one
//! owner of the service's state (`state`).
//!
//! One cancellation token is the shutdown signal for everything (the mini-redis shape):
//! SIGTERM/SIGINT cancel it, the pipeline finishes the batch it holds, flushes and commits,
//! and the HTTP server stops taking requests.

pub mod http;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ObserveOptions, ServeArgs};
use crate::model::ModelStore;
use crate::online::feedback::{self, FeedbackConfig};
use crate::online::Overlay;
use crate::pipeline::{self, Guarantee, PipelineConfig};
use crate::shadow::ShadowOutput;
use crate::stats::observe::About;
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
    pub observe: ObserveOptions,
    /// Online learning from a feedback topic (`crate::online`), when set.
    pub feedback: Option<FeedbackConfig>,
}

impl ServiceConfig {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        let observe = args
            .observe
            .options(args.instance())
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            pipeline: args.pipeline_config()?,
            model: args.model.clone(),
            allow_kind_change: args.allow_kind_change,
            http_addr: args.http_addr,
            admin_token: std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
            observe,
            feedback: args.online.feedback_config(),
        })
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
    crate::config::refuse_unsafe_settings(&config.pipeline)?;
    let store = ModelStore::open(&config.model, config.allow_kind_change)
        .with_context(|| format!("loading model {}", config.model.display()))?;
    let model = store.current();
    info!(kind = %model.kind(), version = %model.version, path = %config.model.display(), "model loaded");
    let pipeline_config = &config.pipeline;
    let about = About {
        guarantee: match &pipeline_config.guarantee {
            Guarantee::AtLeastOnce => "at-least-once".into(),
            Guarantee::ExactlyOnce { .. } => "exactly-once".into(),
        },
        group: pipeline_config.group.clone(),
        input_topic: pipeline_config.input_topic.clone(),
        output_topic: pipeline_config.output_topic.clone(),
        dead_letter_topic: pipeline_config.dead_letter_topic.clone(),
    };
    let stats = config.observe.stats.clone();
    let state = ServiceState::with_stats(store, stats.clone(), about);
    if let Some(topic) = &stats.topic {
        let client = client_settings(pipeline_config);
        let (topic, instance) = (topic.clone(), stats.instance.clone());
        let last = tokio::task::spawn_blocking(move || {
            crate::stats::emit::last_emitted(client, &topic, &instance)
        })
        .await?
        .context("reading the stats topic's last window")?;
        if let Some(end) = last {
            info!(
                window_end_ms = end,
                "statistics resume after the last window emitted"
            );
            state.observe.resume_after(end);
        }
    }
    if let Some(topic) = &config.observe.shadow_topic {
        state.observe.shadow.set_output(Some(ShadowOutput {
            producer: client_settings(pipeline_config),
            topic: topic.clone(),
        }));
    }
    if let Some(path) = &config.observe.shadow_model {
        let candidate = crate::model::LoadedModel::load(path)
            .with_context(|| format!("loading the shadow model {}", path.display()))?;
        state
            .store
            .check(&candidate)
            .with_context(|| format!("the shadow model {}", path.display()))?;
        state
            .observe
            .shadow
            .start(Arc::new(candidate))
            .context("starting the shadow model")?;
    }
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

    if stats.enabled {
        crate::stats::emit::spawn(
            Arc::clone(&state),
            stats
                .topic
                .as_ref()
                .map(|_| client_settings(&config.pipeline)),
            shutdown.child_token(),
        )
        .context("starting the stats thread")?;
    }
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

/// Broker address and `-X` properties, for the side clients (stats, shadow topic).
fn client_settings(pipeline: &PipelineConfig) -> rdkafka::config::ClientConfig {
    let mut client = rdkafka::config::ClientConfig::new();
    client.set("bootstrap.servers", &pipeline.brokers);
    for (key, value) in &pipeline.properties {
        client.set(key, value);
    }
    client
}

/// `streamscore serve`: runs until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let handle = start(ServiceConfig::from_args(args)?).await?;
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

//! `/api/pull`: a task that runs the model manager's download and reports its progress as
//! Ollama status lines. The client leaving cancels the download (partial data is kept).

use crate::{
    engine::{Engine, ModelEntry},
    models::{CancellationToken, ModelManager, ModelSpec, Progress},
};
use axum::body::Bytes;
use futures_util::Stream;
use serde_json::{json, Value};
use std::{convert::Infallible, sync::Arc};
use tokio::sync::mpsc;

/// Pulls `spec`, sending status lines; registers `name` when done.
pub async fn run(
    manager: Arc<ModelManager>,
    engine: Engine,
    name: String,
    spec: ModelSpec,
    spec_text: String,
    lines: mpsc::Sender<Value>,
) {
    let cancel = CancellationToken::new();
    let (progress, mut updates) = mpsc::unbounded_channel();
    let _ = lines.send(json!({ "status": "pulling manifest" })).await;
    let pull = {
        let cancel = cancel.clone();
        async move { manager.pull(&spec, Some(progress), cancel).await }
    };
    tokio::pin!(pull);
    let result = loop {
        tokio::select! {
            result = &mut pull => break result,
            Some(update) = updates.recv() => {
                if lines.send(progress_line(&update)).await.is_err() {
                    // The client went away: stop the download.
                    cancel.cancel();
                }
            }
        }
    };
    // Events sent just before the end are still queued.
    while let Ok(update) = updates.try_recv() {
        let _ = lines.send(progress_line(&update)).await;
    }
    let last = match result {
        Ok(resolved) => {
            if !engine.models().contains_key(&name) {
                engine.add_model(&name, ModelEntry::new(spec_text));
            }
            tracing::info!("pulled `{name}` to {}", resolved.path.display());
            json!({ "status": "success" })
        }
        Err(err) => json!({ "error": err.to_string() }),
    };
    let _ = lines.send(last).await;
}

fn progress_line(update: &Progress) -> Value {
    json!({
        "status": format!("pulling {}", update.file),
        "digest": update.file,
        "total": update.bytes_total,
        "completed": update.bytes_done,
    })
}

/// The status lines as an NDJSON body stream.
pub fn ndjson_stream(
    receiver: mpsc::Receiver<Value>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok(Bytes::from(format!("{line}\n"))), receiver))
    })
}

/// Waits for the pull to end; returns its last line.
pub async fn last_line(mut receiver: mpsc::Receiver<Value>) -> Value {
    let mut last = json!({ "error": "the pull ended without a result" });
    while let Some(line) = receiver.recv().await {
        last = line;
    }
    last
}

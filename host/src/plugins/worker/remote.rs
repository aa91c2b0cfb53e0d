//! A model and a generation living in a worker, with the methods of the in-process handles.
//! A model whose worker was restarted loads itself again on its next call (same request), so
//! a crash costs the requests in flight, not the model.

use super::{
    supervisor::Supervisor,
    wire::{self, Call, Reply},
};
use crate::plugins::error::BackendError;
use llmlocal_plugin_api::{
    EmbedRequest, GenerateRequest, GenerationStats, LoadRequest, ModelMetadata, PluginError, Step,
};
use std::sync::{Arc, Mutex};

use super::process::WorkerProcess;

/// A model loaded in the worker of `supervisor`.
pub struct RemoteModel {
    supervisor: Arc<Supervisor>,
    request: LoadRequest,
    /// The worker epoch it was loaded in and its id there.
    slot: Mutex<(u64, u64)>,
}

impl RemoteModel {
    pub fn load(supervisor: Arc<Supervisor>, request: LoadRequest) -> Result<Self, BackendError> {
        let (worker, epoch) = supervisor.current()?;
        let id = load_in(&supervisor, &worker, &request)?;
        Ok(RemoteModel {
            supervisor,
            request,
            slot: Mutex::new((epoch, id)),
        })
    }

    /// The live worker and this model's id in it, loading the model again in a restarted one.
    fn ensure(&self) -> Result<(Arc<WorkerProcess>, u64), BackendError> {
        let (worker, epoch) = self.supervisor.current()?;
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.0 != epoch {
            tracing::info!(
                "backend `{}` was restarted: loading the model again",
                self.supervisor.name()
            );
            slot.1 = load_in(&self.supervisor, &worker, &self.request)?;
            slot.0 = epoch;
        }
        Ok((worker, slot.1))
    }

    fn call(
        &self,
        call: impl FnOnce(u64) -> Call,
    ) -> Result<(Arc<WorkerProcess>, Reply), BackendError> {
        let (worker, id) = self.ensure()?;
        let call = call(id);
        let name = call.name();
        let reply = worker
            .call(call, self.supervisor.settings())
            .map_err(|down| self.supervisor.down(name, down))?;
        Ok((worker, reply))
    }

    pub fn metadata(&self) -> Result<ModelMetadata, BackendError> {
        match self.call(|model| Call::Metadata { model })?.1 {
            Reply::Metadata(m) => Ok(m.into()),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let call = |model| Call::Tokenize {
            model,
            text: text.to_string(),
            add_special,
            parse_special,
        };
        match self.call(call)?.1 {
            Reply::Tokens(t) => Ok(t),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, BackendError> {
        let call = |model| Call::Detokenize {
            model,
            tokens: tokens.to_vec(),
            skip_special,
        };
        match self.call(call)?.1 {
            Reply::Text(t) => Ok(t),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let call = |model| Call::Logits {
            model,
            tokens: tokens.to_vec(),
        };
        match self.call(call)?.1 {
            Reply::Floats(f) => Ok(f),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn embed(&self, request: &EmbedRequest) -> Result<Vec<Vec<f32>>, BackendError> {
        let call = |model| Call::Embed {
            model,
            request: request.into(),
        };
        match self.call(call)?.1 {
            Reply::Vectors(v) => Ok(v),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn generate(&self, request: &GenerateRequest) -> Result<RemoteGeneration, BackendError> {
        let call = |model| Call::Generate {
            model,
            request: request.into(),
        };
        match self.call(call)? {
            (worker, Reply::Generation(id)) => Ok(RemoteGeneration {
                supervisor: Arc::clone(&self.supervisor),
                worker,
                id,
            }),
            (_, other) => Err(unexpected(&self.supervisor, other)),
        }
    }
}

impl Drop for RemoteModel {
    fn drop(&mut self) {
        let (epoch, id) = *self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok((worker, current)) = self.supervisor.current_if_alive() {
            if current == epoch {
                worker.send(Call::DropModel { model: id });
            }
        }
    }
}

fn load_in(
    supervisor: &Supervisor,
    worker: &WorkerProcess,
    request: &LoadRequest,
) -> Result<u64, BackendError> {
    let reply = worker
        .call(
            Call::Load(wire::LoadRequest::from(request)),
            supervisor.settings(),
        )
        .map_err(|down| supervisor.down("load", down))?;
    match reply {
        Reply::Model(id) => Ok(id),
        other => Err(unexpected(supervisor, other)),
    }
}

/// A plugin error as the plugin sent it; anything else is a protocol bug.
fn unexpected(supervisor: &Supervisor, reply: Reply) -> BackendError {
    match reply {
        Reply::Error(err) => BackendError {
            backend: supervisor.name().to_string(),
            source: err.into(),
        },
        other => BackendError {
            backend: supervisor.name().to_string(),
            source: PluginError::internal(format!(
                "its worker process answered with the wrong message ({other:?})"
            )),
        },
    }
}

/// A generation in a worker. Dropping it cancels it there.
pub struct RemoteGeneration {
    supervisor: Arc<Supervisor>,
    /// The worker it runs in: if that one dies, so did the generation.
    worker: Arc<WorkerProcess>,
    id: u64,
}

impl RemoteGeneration {
    /// The next step; a worker silent past the step timeout is killed as hung.
    pub fn next(&mut self) -> Result<Step, BackendError> {
        let reply = self
            .worker
            .call(
                Call::Next {
                    generation: self.id,
                },
                self.supervisor.settings(),
            )
            .map_err(|down| self.supervisor.down("next", down))?;
        match reply {
            Reply::Step(step) => Ok(step.into()),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }

    pub fn stats(&self) -> Result<GenerationStats, BackendError> {
        let reply = self
            .worker
            .call(
                Call::Stats {
                    generation: self.id,
                },
                self.supervisor.settings(),
            )
            .map_err(|down| self.supervisor.down("stats", down))?;
        match reply {
            Reply::Stats(stats) => Ok(stats.into()),
            other => Err(unexpected(&self.supervisor, other)),
        }
    }
}

impl Drop for RemoteGeneration {
    fn drop(&mut self) {
        self.worker.send(Call::DropGeneration {
            generation: self.id,
        });
    }
}

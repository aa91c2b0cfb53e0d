//! The example plugin of docs/plugins.md, complete and compiled in CI: a backend whose
//! "model" is any UTF-8 text file. Tokens are bytes (0..=255) plus BOS (256) and EOS (257);
//! the next token's logit is `ln(1 + n)`, where `n` counts how often it followed the previous
//! token in the file (EOS follows the file's last byte). Real backends differ in the maths,
//! not in the shape: load, metadata, tokenize, generate with the contract's sampling order
//! (docs/contract.md), logits.

use llmlocal_plugin_api::{
    capability, Backend, FinishReason, GenerateRequest, Generation, GenerationStats, LoadRequest,
    Manifest, Model, ModelMetadata, PluginError, Sampling, StatsClock, Step, Token, TokenLogprobs,
    Utf8Decoder,
};
use std::sync::Arc;

const BOS: u32 = 256;
const EOS: u32 = 257;
const VOCAB: usize = 258;
const CONTEXT: u32 = 4096;

fn manifest() -> Manifest {
    let mut m = Manifest::new("bigram", env!("CARGO_PKG_VERSION"), "example: byte bigrams");
    m.add_format("bigram-text");
    // What this backend implements beyond the base sampling set; the host sends nothing else.
    m.capabilities.insert(capability::LOGIT_BIAS);
    m.capabilities.insert(capability::LOGPROBS);
    m
}

pub struct BigramBackend;

impl Backend for BigramBackend {
    fn load(&self, request: LoadRequest) -> Result<Box<dyn Model>, PluginError> {
        let path = request
            .model_paths
            .first()
            .ok_or_else(|| PluginError::invalid_request("no model path"))?;
        let bytes = std::fs::read(path.as_str()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PluginError::not_found(format!("{path}: {e}")),
            _ => PluginError::unsupported_format(format!("{path}: {e}")),
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PluginError::unsupported_format(format!("{path} is not UTF-8 text")))?;
        if text.is_empty() {
            return Err(PluginError::unsupported_format(format!("{path} is empty")));
        }
        let context = match request.context_length {
            0 => CONTEXT,
            n => n,
        };
        Ok(Box::new(BigramModel {
            counts: Arc::new(counts(text.as_bytes())),
            context,
            name: path.to_string(),
        }))
    }
}

/// `counts[a][b]`: how often token `b` followed token `a` (BOS starts, EOS ends the text).
fn counts(text: &[u8]) -> Vec<Vec<u32>> {
    let mut counts = vec![vec![0u32; VOCAB]; VOCAB];
    let ids: Vec<usize> = std::iter::once(BOS as usize)
        .chain(text.iter().map(|&b| usize::from(b)))
        .chain(std::iter::once(EOS as usize))
        .collect();
    for pair in ids.windows(2) {
        counts[pair[0]][pair[1]] += 1;
    }
    counts
}

struct BigramModel {
    counts: Arc<Vec<Vec<u32>>>,
    context: u32,
    name: String,
}

fn logits_after(counts: &[Vec<u32>], last: u32) -> Vec<f32> {
    counts[last as usize]
        .iter()
        .map(|&n| (1.0 + n as f32).ln())
        .collect()
}

impl Model for BigramModel {
    fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            architecture: "bigram".into(),
            name: self.name.as_str().into(),
            context_length: self.context,
            train_context_length: self.context,
            vocab_size: VOCAB as u32,
            embedding_length: 0,
            layer_count: 0,
            parameter_count: (VOCAB * VOCAB) as u64,
            size_bytes: (VOCAB * VOCAB * 4) as u64,
            bos_token: Some(BOS).into(),
            eos_token: Some(EOS).into(),
            end_of_generation_tokens: vec![EOS].into(),
            chat_template: None.into(),
            device: "cpu".into(),
            load_ms: 0.0,
            pooling: "".into(),
            extensions: Vec::new().into(),
        }
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        _parse: bool,
    ) -> Result<Vec<u32>, PluginError> {
        let bos = add_special.then_some(BOS);
        Ok(bos.into_iter().chain(text.bytes().map(u32::from)).collect())
    }

    fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String, PluginError> {
        let mut bytes = Vec::new();
        for &t in tokens {
            match t {
                0..=255 => bytes.push(t as u8),
                BOS if !skip_special => bytes.extend(b"<s>"),
                EOS if !skip_special => bytes.extend(b"</s>"),
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn generate(&self, request: GenerateRequest) -> Result<Box<dyn Generation>, PluginError> {
        // The export glue has validated ids, ranges and capabilities already.
        let prompt_len = request.prompt_tokens.len() as u32;
        if prompt_len >= self.context {
            return Err(PluginError::invalid_request(format!(
                "the prompt has {prompt_len} tokens; the context holds {}",
                self.context
            )));
        }
        Ok(Box::new(BigramGeneration {
            counts: Arc::clone(&self.counts),
            history: request.prompt_tokens.to_vec(),
            room: self.context - prompt_len,
            rng: request.sampling.seed_or_random() | 1,
            clock: StatsClock::start(prompt_len),
            decoder: Utf8Decoder::new(),
            generated: 0,
            ended: None,
            request,
        }))
    }

    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, PluginError> {
        let last = *tokens
            .last()
            .ok_or_else(|| PluginError::invalid_request("no tokens"))?;
        Ok(logits_after(&self.counts, last))
    }
}

struct BigramGeneration {
    counts: Arc<Vec<Vec<u32>>>,
    request: GenerateRequest,
    history: Vec<u32>,
    room: u32,
    rng: u64,
    clock: StatsClock,
    decoder: Utf8Decoder,
    generated: u32,
    ended: Option<FinishReason>,
}

impl BigramGeneration {
    /// The contract's order: bias, then (here: no penalties) the draw.
    fn sample(&mut self) -> (u32, Option<TokenLogprobs>) {
        let last = *self.history.last().unwrap_or(&BOS);
        let mut logits = logits_after(&self.counts, last);
        for b in self.request.logit_bias.iter() {
            logits[b.token as usize] += b.bias;
        }
        let id = draw(&logits, &self.request.sampling, &mut self.rng);
        let logprobs = self
            .request
            .logprobs
            .into_option()
            .map(|n| TokenLogprobs::from_logits(&logits, id, n as usize));
        (id, logprobs)
    }

    fn end(&mut self, reason: FinishReason) -> Step {
        self.ended = Some(reason);
        Step::finished_with(reason, self.decoder.finish())
    }
}

/// Greedy (lowest id on ties), or top-k then a temperature draw with a xorshift generator.
fn draw(logits: &[f32], s: &Sampling, rng: &mut u64) -> u32 {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if s.is_greedy() || s.top_k == 1 {
        return order[0];
    }
    if s.top_k > 0 {
        order.truncate(s.top_k as usize);
    }
    let max = logits[order[0] as usize];
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| f64::from((logits[i as usize] - max) / s.temperature).exp())
        .collect();
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let mut target = (*rng >> 11) as f64 / (1u64 << 53) as f64 * weights.iter().sum::<f64>();
    for (&id, w) in order.iter().zip(&weights) {
        target -= w;
        if target <= 0.0 {
            return id;
        }
    }
    order[0]
}

impl Generation for BigramGeneration {
    fn next(&mut self) -> Result<Step, PluginError> {
        if let Some(reason) = self.ended {
            return Ok(Step::finished(reason));
        }
        let max = self.request.max_tokens;
        if max > 0 && self.generated >= max {
            return Ok(self.end(FinishReason::Length));
        }
        if self.generated >= self.room {
            return Ok(self.end(FinishReason::ContextFull));
        }
        let (id, logprobs) = self.sample();
        if id == EOS && !self.request.ignore_eos {
            return Ok(self.end(FinishReason::EndOfGeneration));
        }
        self.history.push(id);
        self.generated += 1;
        self.clock.token();
        let piece = if id < 256 { vec![id as u8] } else { Vec::new() };
        let mut token = Token::new(id, self.decoder.push(&piece));
        token.logprobs = logprobs.into();
        Ok(Step::Token(token))
    }

    fn stats(&self) -> GenerationStats {
        self.clock.stats()
    }
}

fn new_backend() -> Result<BigramBackend, PluginError> {
    Ok(BigramBackend)
}

llmlocal_plugin_api::export_backend! { manifest: manifest, backend: new_backend }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_follows_the_most_frequent_bigram_and_ends_with_the_text() {
        let model = BigramModel {
            counts: Arc::new(counts(b"ababab.")),
            context: 64,
            name: "t".into(),
        };
        let prompt = model.tokenize("a", true, false).unwrap();
        let mut generation = model.generate(GenerateRequest::greedy(prompt, 10)).unwrap();
        let mut text = String::new();
        let reason = loop {
            match generation.next().unwrap() {
                Step::Token(t) => text.push_str(&t.text),
                Step::Finished(end) => break end.reason,
            }
        };
        // After 'a' comes 'b'; after 'b' 'a' (twice) beats '.' (once); Length after 10.
        assert_eq!(text, "bababababa");
        assert_eq!(reason, FinishReason::Length);
    }
}

//! Fuzzing entry points: each takes untrusted bytes and drives one parser through what the
//! engine does with its result. The cargo-fuzz targets in `fuzz/` and the corpus mutation
//! test (`formats/tests/fuzz_corpus.rs`, run in CI on stable) call these same functions, so
//! a crash either one finds reproduces in the other.
//!
//! A panic is a bug; an `Err` is the right answer to a bad file. Each function returns
//! whether the input parsed, so a test can check its mutations still reach past the first
//! checks.

use std::io::Cursor;

use crate::gguf::{self, GgufHeader, ALIGNMENT_KEY};
use crate::peft::{self, PeftConfig};

/// Module paths the PEFT config's rank and alpha lookups are exercised with.
const MODULES: [&str; 4] = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.11.mlp.down_proj",
    "q_proj",
    "",
];

/// The GGUF reader on a file's bytes: the header (bounded by the file's length, as files are
/// read, and streamed without a length), then everything the host asks of it, then every
/// F32/F16/BF16 tensor, as adapters are read.
pub fn gguf_reader(data: &[u8]) -> bool {
    let len = data.len() as u64;
    let streamed = gguf::read_header(data);
    let header = match gguf::read_header_bounded(data, len) {
        Ok(header) => header,
        Err(e) => {
            let _ = e.to_string();
            return false;
        }
    };
    // The length bound only refuses earlier; a file it accepts reads the same without it.
    match &streamed {
        Ok(h) => assert!(same_header(h, &header), "streamed header differs"),
        Err(e) => panic!("the bounded reader accepted a header the streaming one refused: {e}"),
    }
    query(&header, len);
    let _ = gguf::read_tensors_f32(&mut Cursor::new(data), &header).map_err(|e| e.to_string());
    metadata_round_trip(&header);
    true
}

/// The lookups the host and plugins make on a header (memory estimates, compatibility).
fn query(header: &GgufHeader, len: u64) {
    let _ = header.check_data_section(len).map_err(|e| e.to_string());
    let _ = header.required_file_len();
    let _ = header.architecture();
    let _ = header.get_u64(ALIGNMENT_KEY);
    let _ = header.get_f32("adapter.lora.alpha");
    for t in &header.tensors {
        let _ = (
            t.shape(),
            t.element_count(),
            t.byte_size(),
            t.ggml_type.to_string(),
        );
        let _ = header.tensor(&t.name);
    }
}

/// What was read can be written back and reads the same (the writer and reader agree).
fn metadata_round_trip(header: &GgufHeader) {
    let bytes = match gguf::write_to_vec(&header.metadata, &[]) {
        Ok(bytes) => bytes,
        Err(e) => panic!("metadata that was read cannot be written back: {e}"),
    };
    match gguf::read_header(bytes.as_slice()) {
        Ok(back) => assert!(
            same_debug(&back.metadata, &header.metadata),
            "metadata changed through a write and a read"
        ),
        Err(e) => panic!("written metadata does not read back: {e}"),
    }
}

/// Equal, with NaN equal to itself (a NaN read from a file is still the same value).
fn same_header(a: &GgufHeader, b: &GgufHeader) -> bool {
    a == b || same_debug(a, b)
}

fn same_debug<T: std::fmt::Debug + PartialEq>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// The PEFT `adapter_config.json` parser, then the rank/alpha/scaling lookups conversion and
/// merging make, with module paths and with the config's own pattern keys.
pub fn peft_config(data: &[u8]) -> bool {
    let config = match PeftConfig::parse(data) {
        Ok(config) => config,
        Err(e) => {
            let _ = (e.to_string(), e.is_unsupported_feature());
            return false;
        }
    };
    let keys = config
        .rank_pattern
        .entries()
        .iter()
        .map(|(k, _)| k.as_str());
    let alpha_keys = config
        .alpha_pattern
        .entries()
        .iter()
        .map(|(k, _)| k.as_str());
    for module in MODULES.into_iter().chain(keys).chain(alpha_keys) {
        let _ = (config.rank_of(module), config.alpha_of(module));
        let _ = config.scaling(module);
        let _ = peft::split_tensor_name(module);
    }
    true
}

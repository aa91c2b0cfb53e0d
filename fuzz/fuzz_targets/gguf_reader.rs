//! The GGUF header reader and tensor reads on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    llmlocal_formats::fuzz::gguf_reader(data);
});

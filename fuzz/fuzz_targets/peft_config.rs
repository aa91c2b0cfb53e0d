//! The PEFT `adapter_config.json` parser and its rank/alpha lookups on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    llmlocal_formats::fuzz::peft_config(data);
});

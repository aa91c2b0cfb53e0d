//! Test plugin: a valid shared library named like a plugin that exports no llmlocal root
//! module. The host must refuse it as "not an llmlocal backend plugin".

/// Something exported, so this is an ordinary library and not an empty one.
#[no_mangle]
pub extern "C" fn llmlocal_test_not_a_backend() -> u32 {
    42
}

//! llmlocal: the plugin host library.

//! GGUF: see the gguf helper brief.

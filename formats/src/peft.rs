//! PEFT LoRA adapter configs.

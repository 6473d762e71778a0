//! The CLIP byte-level BPE tokenizer, with the vocabulary embedded in the binary.

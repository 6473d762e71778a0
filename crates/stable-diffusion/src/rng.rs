//! Torch-compatible random number streams (CPU mt19937 and Gaussian sampling).

//! Noise schedules, timestep spacing, sigma schedules and the samplers.

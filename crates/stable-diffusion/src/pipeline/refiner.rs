//! The base-then-refiner handoff, as diffusers splits the timesteps with `denoising_end` (the
//! base) and `denoising_start` (the refiner): both cut at the same training timestep.

/// The training timestep where a run switches at fraction `switch` of the schedule:
/// `int(round(T - switch · T))` with Python's rounding (ties to even).
pub fn switch_timestep(switch: f64, num_train_timesteps: usize) -> f64 {
    let t = num_train_timesteps as f64;
    (t - switch * t).round_ties_even()
}

/// How many of `timesteps` (in order, falling) the base runs with `denoising_end = switch`:
/// those at or above the cut.
pub fn base_steps(timesteps: &[f64], switch: f64, num_train_timesteps: usize) -> usize {
    let cutoff = switch_timestep(switch, num_train_timesteps);
    timesteps.iter().filter(|&&t| t >= cutoff).count()
}

/// The first of `timesteps` the refiner runs with `denoising_start = switch`: it runs those
/// below the cut, which are the last ones.
pub fn refiner_start(timesteps: &[f64], switch: f64, num_train_timesteps: usize) -> usize {
    let cutoff = switch_timestep(switch, num_train_timesteps);
    timesteps.len() - timesteps.iter().filter(|&&t| t < cutoff).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_splits_leading_timesteps_as_diffusers_does() {
        // EulerDiscrete, "leading", 10 steps, steps_offset 1.
        let ts: Vec<f64> = (0..10).rev().map(|i| (i * 100 + 1) as f64).collect();
        assert_eq!(switch_timestep(0.8, 1000), 200.0);
        assert_eq!(base_steps(&ts, 0.8, 1000), 8);
        assert_eq!(refiner_start(&ts, 0.8, 1000), 8);
        // A cut exactly on a timestep: the base keeps it (>=), the refiner starts after it.
        assert_eq!(base_steps(&ts, 0.699, 1000), 7);
        assert_eq!(refiner_start(&ts, 0.699, 1000), 7);
    }
}

//! AUTOMATIC1111's "Restart" sampler (`restart_sampler` in its modules/sd_samplers_extra.py,
//! after Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): Heun steps
//! down the sigma list, and at σ ≈ 0.1 a jump back up to σ ≈ 2 with fresh noise, followed by
//! Heun steps down again, once or twice.
//!
//! With n = `sigmas.len() − 1` steps: under 20 there is no restart (plain Heun on the list).
//! From 20 the list is rebuilt as Karras sigmas between its last nonzero and its first sigma
//! with n − r·k steps, and k restarts of r steps are added (r = 9, k = 1; from 36 steps
//! r = ⌊n/4⌋, k = 2): each restart begins at the list sigma nearest 0.1 and climbs to the list
//! sigma nearest 2, walking r Karras steps back down between the two. So the run still takes n
//! steps, two model calls each (one on a step to 0).
//!
//! Two readings of ours: a list that does not end at 0 (the base part of a refiner handoff) is
//! run as it is, plain Heun with no rebuild (A1111 never hands the sampler such a list, and
//! the rebuild would end at 0); and when the restart cannot climb (σ ≈ 2 is not above σ ≈ 0.1
//! on a short img2img list) the steps it would have taken are reported as done at the end, so
//! the progress total stays n.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{add_noise_scaled, to_d, KSettings};
use super::ops::{add, mul};
use super::sigmas::karras;
use crate::rng::NoiseSource;
use crate::Result;

/// The sigma where a restart begins.
const RESTART_FROM: f32 = 0.1;
/// The sigma a restart climbs back to.
const RESTART_TO: f32 = 2.0;

/// The index of the sigma nearest `target` (the first of equals, as `torch.argmin`).
fn nearest(sigmas: &[f32], target: f32) -> usize {
    let mut best = 0;
    for (i, s) in sigmas.iter().enumerate() {
        if (s - target).abs() < (sigmas[best] - target).abs() {
            best = i;
        }
    }
    best
}

/// The (from, to) sigma pairs the run steps through: the (possibly rebuilt) list with the
/// restart segments spliced in after the step that reaches σ ≈ 0.1.
fn step_pairs(sigmas: &[f32]) -> Vec<(f32, f32)> {
    let steps = sigmas.len().saturating_sub(1);
    let ends_at_zero = sigmas.last() == Some(&0.0) && sigmas.len() >= 2;
    let (list, restart) = if steps >= 20 && ends_at_zero {
        let (restart_steps, times) = if steps >= 36 { (steps / 4, 2) } else { (9, 1) };
        let main = steps - restart_steps * times;
        let low = f64::from(sigmas[sigmas.len() - 2]);
        let list = karras(low, f64::from(sigmas[0]), main);
        (list, Some((restart_steps, times)))
    } else {
        (sigmas.to_vec(), None)
    };
    let mut pairs = Vec::with_capacity(steps);
    let restart_at = restart.map(|r| (nearest(&list, RESTART_FROM), r));
    for i in 0..list.len().saturating_sub(1) {
        pairs.push((list[i], list[i + 1]));
        let Some((at, (restart_steps, times))) = restart_at else {
            continue;
        };
        if i + 1 != at {
            continue;
        }
        let top = nearest(&list, RESTART_TO);
        if top >= at {
            continue;
        }
        // Karras sigmas from the list's σ ≈ 2 down to its σ ≈ 0.1, without the closing 0.
        let mut segment = karras(f64::from(list[at]), f64::from(list[top]), restart_steps + 1);
        segment.pop();
        for _ in 0..times {
            pairs.extend(segment.windows(2).map(|w| (w[0], w[1])));
        }
    }
    pairs
}

/// Restart sampling: Heun steps over [`step_pairs`], with fresh noise wherever a step starts
/// above where the last one ended (`x += noise · s_noise · √(σ² − σ_last²)`).
pub(crate) fn sample_restart(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let pairs = step_pairs(sigmas);
    let mut last: Option<f32> = None;
    for (step, &(from, to)) in pairs.iter().enumerate() {
        match last {
            Some(last) if last < from => {
                let scale = settings.s_noise() * (from * from - last * last).sqrt();
                x = add_noise_scaled(&x, rng, scale)?;
            }
            _ => {}
        }
        let denoised = model.denoise_step(step, &x, from)?;
        let d = to_d(&x, &denoised, from)?;
        let dt = to - from;
        let euler = add(&x, &mul(&d, dt)?)?;
        x = if to == 0.0 {
            euler
        } else {
            let denoised_2 = model.denoise(&euler, to)?;
            let d_2 = to_d(&euler, &denoised_2, to)?;
            let d_prime = mul(&add(&d, &d_2)?, 0.5)?;
            add(&x, &mul(&d_prime, dt)?)?
        };
        last = Some(to);
    }
    // A restart that could not climb leaves its steps unreported: count them as done.
    for step in pairs.len()..sigmas.len().saturating_sub(1) {
        model.step_done(step, &x, None)?;
    }
    Ok(x)
}

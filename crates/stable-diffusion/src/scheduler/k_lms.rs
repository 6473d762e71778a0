//! Linear multistep samplers on the sigma ODE: k-diffusion's `sample_lms` (A1111 "LMS") and
//! the improved PNDM `sample_ipndm` (fixed Adams–Bashforth weights).

use std::collections::VecDeque;

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{to_d, KSettings};
use super::ops::{add, div, mul};
use crate::rng::NoiseSource;
use crate::Result;

/// The polynomial ∏ (τ − roots[k]) / (node − roots[k]) as coefficients, lowest power first.
fn lagrange_basis(node: f64, roots: &[f64]) -> Vec<f64> {
    let mut poly = vec![1.0];
    for &root in roots {
        let scale = node - root;
        let mut next = vec![0.0; poly.len() + 1];
        for (power, c) in poly.iter().enumerate() {
            next[power + 1] += c / scale;
            next[power] -= c * root / scale;
        }
        poly = next;
    }
    poly
}

/// ∫ from `a` to `b` of a polynomial given by its coefficients.
fn integrate(poly: &[f64], a: f64, b: f64) -> f64 {
    poly.iter()
        .enumerate()
        .map(|(power, c)| {
            let p = power as i32 + 1;
            c * (b.powi(p) - a.powi(p)) / f64::from(p)
        })
        .sum()
}

/// The weight of the direction at `sigmas[i − j]` in an order-`order` linear multistep step
/// from `sigmas[i]` to `sigmas[i + 1]`: the integral of its Lagrange basis polynomial.
pub(crate) fn linear_multistep_coeff(order: usize, sigmas: &[f32], i: usize, j: usize) -> f64 {
    let node = f64::from(sigmas[i - j]);
    let roots: Vec<f64> = (0..order)
        .filter(|&k| k != j)
        .map(|k| f64::from(sigmas[i - k]))
        .collect();
    let poly = lagrange_basis(node, &roots);
    integrate(&poly, f64::from(sigmas[i]), f64::from(sigmas[i + 1]))
}

/// Linear multistep of order up to 4 (A1111's) on the last directions.
pub(crate) fn sample_lms(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    _rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    const ORDER: usize = 4;
    let mut directions: VecDeque<Tensor> = VecDeque::new();
    for i in 0..sigmas.len() - 1 {
        let denoised = model.denoise_step(i, &x, sigmas[i])?;
        directions.push_back(to_d(&x, &denoised, sigmas[i])?);
        if directions.len() > ORDER {
            directions.pop_front();
        }
        let order = (i + 1).min(ORDER).min(directions.len());
        // Newest direction first: j = 0 is step i, j = 1 step i − 1, ...
        for (j, d) in directions.iter().rev().take(order).enumerate() {
            let coeff = linear_multistep_coeff(order, sigmas, i, j) as f32;
            x = add(&x, &mul(d, coeff)?)?;
        }
    }
    Ok(x)
}

/// Improved PNDM: Adams–Bashforth steps of order up to 4 with the fixed weights of equally
/// spaced steps; the last step (to σ = 0) returns the denoised sample.
pub(crate) fn sample_ipndm(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    _rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    const MAX_ORDER: usize = 4;
    // Past directions, oldest first (at most MAX_ORDER − 1).
    let mut h: Vec<Tensor> = Vec::new();
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise_step(i, &x, sigma)?;
        let d = to_d(&x, &denoised, sigma)?;
        let order = (i + 1).min(MAX_ORDER).min(h.len() + 1);
        let n = h.len();
        let next = if sigma_next == 0.0 {
            denoised
        } else {
            // Adams–Bashforth combination of this and the last directions.
            let combined = match order {
                1 => d.clone(),
                2 => mul(&(mul(&d, 3.0)? - &h[n - 1])?, 0.5)?,
                3 => {
                    let sum = ((mul(&d, 23.0)? - mul(&h[n - 1], 16.0)?)? + mul(&h[n - 2], 5.0)?)?;
                    div(&sum, 12.0)?
                }
                _ => {
                    let sum = (((mul(&d, 55.0)? - mul(&h[n - 1], 59.0)?)?
                        + mul(&h[n - 2], 37.0)?)?
                        - mul(&h[n - 3], 9.0)?)?;
                    div(&sum, 24.0)?
                }
            };
            add(&x, &mul(&combined, sigma_next - sigma)?)?
        };
        if h.len() == MAX_ORDER - 1 {
            h.remove(0);
        }
        h.push(d);
        x = next;
    }
    Ok(x)
}

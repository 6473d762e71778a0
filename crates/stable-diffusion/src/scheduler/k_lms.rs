//! Linear multistep samplers on the sigma ODE: k-diffusion's `sample_lms` (A1111 "LMS") and
//! the improved PNDM `sample_ipndm` (fixed Adams–Bashforth weights).

use std::collections::VecDeque;

use candle_core::Tensor;

use super::kdiff::{to_d, KAlgorithm};
use super::ops::{add, mul};
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

/// Linear multistep of order up to `order` (4 in A1111) on the last directions.
pub(crate) struct KLms {
    pub order: usize,
    directions: VecDeque<Tensor>,
}

impl KLms {
    /// LMS of the given maximum order.
    pub fn new(order: usize) -> Self {
        Self {
            order,
            directions: VecDeque::new(),
        }
    }
}

impl KAlgorithm for KLms {
    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        _stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        self.directions.push_back(to_d(x, denoised, sigmas[i])?);
        if self.directions.len() > self.order {
            self.directions.pop_front();
        }
        let order = (i + 1).min(self.order).min(self.directions.len());
        let mut x = x.clone();
        // Newest direction first: j = 0 is step i, j = 1 step i − 1, ...
        for (j, d) in self.directions.iter().rev().take(order).enumerate() {
            let coeff = linear_multistep_coeff(order, sigmas, i, j) as f32;
            x = add(&x, &mul(d, coeff)?)?;
        }
        Ok(x)
    }

    fn reset(&mut self) {
        self.directions.clear();
    }
}

/// Improved PNDM: Adams–Bashforth steps of order up to 4 with the fixed weights of equally
/// spaced steps; the last step (to σ = 0) returns the denoised sample.
pub(crate) struct KIpndm {
    pub max_order: usize,
    /// Past directions, oldest first (at most `max_order − 1`).
    history: Vec<Tensor>,
}

impl KIpndm {
    /// iPNDM of maximum order 4.
    pub fn new() -> Self {
        Self {
            max_order: 4,
            history: Vec::new(),
        }
    }
}

impl KAlgorithm for KIpndm {
    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        _stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let d = to_d(x, denoised, sigma)?;
        let order = (i + 1).min(self.max_order).min(self.history.len() + 1);
        let h = &self.history;
        let n = h.len();
        let next = if sigma_next == 0.0 {
            denoised.clone()
        } else {
            // Adams–Bashforth combination of this and the last directions.
            let combined = match order {
                1 => d.clone(),
                2 => mul(&(mul(&d, 3.0)? - &h[n - 1])?, 0.5)?,
                3 => {
                    let sum = ((mul(&d, 23.0)? - mul(&h[n - 1], 16.0)?)? + mul(&h[n - 2], 5.0)?)?;
                    super::ops::div(&sum, 12.0)?
                }
                _ => {
                    let sum = (((mul(&d, 55.0)? - mul(&h[n - 1], 59.0)?)?
                        + mul(&h[n - 2], 37.0)?)?
                        - mul(&h[n - 3], 9.0)?)?;
                    super::ops::div(&sum, 24.0)?
                }
            };
            add(x, &mul(&combined, sigma_next - sigma)?)?
        };
        if self.history.len() == self.max_order - 1 {
            self.history.remove(0);
        }
        self.history.push(d);
        Ok(next)
    }

    fn reset(&mut self) {
        self.history.clear();
    }
}

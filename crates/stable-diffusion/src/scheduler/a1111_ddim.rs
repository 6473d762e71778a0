//! AUTOMATIC1111's "DDIM" and "PLMS" (its `sd_samplers_timesteps_impl`), on the grid of
//! [`super::a1111_timesteps`].
//!
//! Both visit `grid[m−1], …, grid[1]` (one call fewer than the grid has timesteps) and step from
//! `grid[k]` to `grid[k−1]`, so a run ends at ᾱ of `grid[0]` rather than at a clean sample:
//!
//! ```text
//! x₀ = (x − sqrt(1 − ᾱ_k)·ε) / sqrt(ᾱ_k)
//! DDIM:  x ← sqrt(ᾱ_{k−1})·x₀ + sqrt(1 − ᾱ_{k−1} − σ²)·ε + σ·z,
//!        σ = η·sqrt((1 − ᾱ_{k−1}) / (1 − ᾱ_k) · (1 − ᾱ_k / ᾱ_{k−1}))   (z drawn every step)
//! PLMS:  the same jump with η = 0 on a combined ε′: the first step averages ε at grid[k] and
//!        at grid[k−1] after a trial jump (a second model call); later steps use
//!        Adams–Bashforth of order 2, 3, 4 over the previous steps' ε:
//!        (3ε − ε₁)/2,  (23ε − 16ε₁ + 5ε₂)/12,  (55ε − 59ε₁ + 37ε₂ − 9ε₃)/24
//! ```

use candle_core::Tensor;

use super::a1111_timesteps::{Call, TimestepAlgorithm};
use super::check_step;
use super::kdiff::noise_like;
use super::ops::{add, div, mul, sub};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The grid positions a run over `m` timesteps visits, in order: `m−1` down to 1.
fn visited(m: usize) -> impl Iterator<Item = usize> {
    (1..m).rev()
}

/// ᾱ at grid position `k` and at the one below it.
fn alphas(table: &[f32], grid: &[usize], k: usize) -> (f32, f32) {
    (table[grid[k]], table[grid[k - 1]])
}

/// The estimate of the clean sample, `(x − sqrt(1 − ᾱ)·ε) / sqrt(ᾱ)`.
fn clean(x: &Tensor, eps: &Tensor, alpha: f32) -> Result<Tensor> {
    div(&sub(x, &mul(eps, (1.0 - alpha).sqrt())?)?, alpha.sqrt())
}

/// A1111's DDIM with noise amount `eta`.
pub(crate) struct A1111Ddim {
    alphas_cumprod: Vec<f32>,
    eta: f32,
    grid: Vec<usize>,
}

impl A1111Ddim {
    /// DDIM on the schedule `alphas_cumprod`.
    pub fn new(alphas_cumprod: Vec<f32>, eta: f32) -> Self {
        Self {
            alphas_cumprod,
            eta,
            grid: Vec::new(),
        }
    }
}

impl TimestepAlgorithm for A1111Ddim {
    fn plan(&self, grid: &[usize], _img2img: bool) -> Result<Vec<Call>> {
        Ok(visited(grid.len())
            .map(|k| Call {
                timestep: grid[k] as f64,
                step_start: true,
            })
            .collect())
    }

    fn start(&mut self, grid: &[usize], _img2img: bool) -> Result<()> {
        self.grid = grid.to_vec();
        Ok(())
    }

    fn advance(
        &mut self,
        call: usize,
        x: &Tensor,
        eps: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(call, self.grid.len().saturating_sub(1))?;
        let k = self.grid.len() - 1 - call;
        let (a_t, a_prev) = alphas(&self.alphas_cumprod, &self.grid, k);
        let (a64, prev64) = (f64::from(a_t), f64::from(a_prev));
        let sigma = (f64::from(self.eta)
            * ((1.0 - prev64) / (1.0 - a64) * (1.0 - a64 / prev64)).sqrt())
            as f32;
        let x0 = clean(x, eps, a_t)?;
        let direction = mul(eps, (1.0 - a_prev - sigma * sigma).sqrt())?;
        // A1111 draws the noise even when η = 0 (it keeps the random stream's position).
        let noise = noise_like(x, rng)?;
        add(
            &add(&mul(&x0, a_prev.sqrt())?, &direction)?,
            &mul(&noise, sigma)?,
        )
    }
}

/// A1111's PLMS.
pub(crate) struct A1111Plms {
    alphas_cumprod: Vec<f32>,
    grid: Vec<usize>,
    /// ε of the previous steps, most recent last (at most three).
    history: Vec<Tensor>,
    /// The sample and ε of the first step's first call, until its second call.
    warm_up: Option<(Tensor, Tensor)>,
}

impl A1111Plms {
    /// PLMS on the schedule `alphas_cumprod`.
    pub fn new(alphas_cumprod: Vec<f32>) -> Self {
        Self {
            alphas_cumprod,
            grid: Vec::new(),
            history: Vec::new(),
            warm_up: None,
        }
    }

    /// The deterministic jump from grid position `k` to `k − 1` with ε′ = `eps`.
    fn jump(&self, x: &Tensor, eps: &Tensor, k: usize) -> Result<Tensor> {
        let (a_t, a_prev) = alphas(&self.alphas_cumprod, &self.grid, k);
        let x0 = clean(x, eps, a_t)?;
        add(&mul(&x0, a_prev.sqrt())?, &mul(eps, (1.0 - a_prev).sqrt())?)
    }

    /// The Adams–Bashforth combination of `eps` with the history.
    fn combined(&self, eps: &Tensor) -> Result<Tensor> {
        let h = &self.history;
        let n = h.len();
        let term = |t: &Tensor, c: f32| mul(t, c);
        match n {
            1 => div(&sub(&term(eps, 3.0)?, &h[0])?, 2.0),
            2 => div(
                &add(
                    &sub(&term(eps, 23.0)?, &term(&h[1], 16.0)?)?,
                    &term(&h[0], 5.0)?,
                )?,
                12.0,
            ),
            _ => div(
                &sub(
                    &add(
                        &sub(&term(eps, 55.0)?, &term(&h[n - 1], 59.0)?)?,
                        &term(&h[n - 2], 37.0)?,
                    )?,
                    &term(&h[n - 3], 9.0)?,
                )?,
                24.0,
            ),
        }
    }
}

impl TimestepAlgorithm for A1111Plms {
    fn plan(&self, grid: &[usize], _img2img: bool) -> Result<Vec<Call>> {
        let mut calls = Vec::new();
        for (step, k) in visited(grid.len()).enumerate() {
            calls.push(Call {
                timestep: grid[k] as f64,
                step_start: true,
            });
            if step == 0 {
                calls.push(Call {
                    timestep: grid[k - 1] as f64,
                    step_start: false,
                });
            }
        }
        Ok(calls)
    }

    fn start(&mut self, grid: &[usize], _img2img: bool) -> Result<()> {
        self.grid = grid.to_vec();
        self.history.clear();
        self.warm_up = None;
        Ok(())
    }

    fn advance(
        &mut self,
        call: usize,
        x: &Tensor,
        eps: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let m = self.grid.len();
        check_step(call, m.saturating_sub(1) + usize::from(m > 1))?;
        let top = m - 1;
        match call {
            0 => {
                let ahead = self.jump(x, eps, top)?;
                self.warm_up = Some((x.clone(), eps.clone()));
                Ok(ahead)
            }
            1 => {
                let (start, first_eps) = self.warm_up.take().ok_or_else(|| {
                    Error::invalid("step", "PLMS's second call came before its first")
                })?;
                let averaged = div(&add(&first_eps, eps)?, 2.0)?;
                let next = self.jump(&start, &averaged, top)?;
                self.history.push(first_eps);
                Ok(next)
            }
            _ => {
                let k = top - (call - 1);
                let next = self.jump(x, &self.combined(eps)?, k)?;
                self.history.push(eps.clone());
                if self.history.len() > 3 {
                    self.history.remove(0);
                }
                Ok(next)
            }
        }
    }
}

//! AUTOMATIC1111's "UniPC": its port of the UniPC reference code (Zhao et al. 2023), with
//! A1111's default settings: variant bh1, order 3, time-uniform steps, lower-order final steps,
//! data prediction, multistep.
//!
//! Time is continuous, t ∈ [1/N, 1] for an N-step training schedule; the model sees the
//! fractional timestep (t − 1/N)·1000. log α(t) is interpolated linearly over the knots
//! t_i = (i + 1)/N with log α_i = ½ log ᾱ_i; σ(t) = sqrt(1 − α(t)²), λ(t) = log α − log σ.
//! A run of n steps walks t evenly from 1 (txt2img) or `grid[-1]/1000 + 1/1000` (img2img, as
//! A1111 sets it) down to 1/N, calling the model at every point but the last. With the data
//! prediction m = (x − σ·ε)/α, a step of order p from s to t (h = λ_t − λ_s, ĥ = −h) is
//!
//! ```text
//! base  = σ_t/σ_s · x − α_t·(e^ĥ − 1)·m_s
//! D_k   = (m_{s_k} − m_s) / r_k,   r_k = (λ_{s_k} − λ_s)/h   (the p − 1 earlier points)
//! x_t   = base − α_t·B(h)·Σ ρᵖ_k D_k                          (predictor)
//! x_t ← base − α_t·B(h)·(Σ ρᶜ_k D_k + ρᶜ_p·(m_t − m_s))        (corrector, m_t at the predictor)
//! ```
//!
//! with B(h) = ĥ (variant bh1), ρ solving R ρ = b for R_ij = r_j^i (r_p = 1) and
//! b_i = φ_{i+1}(ĥ)·(i+1)!/B(h) (ρᵖ = ½ at order 2, ρᶜ = ½ at order 1). The corrector runs after
//! every model call but the first; the last step has none (and no model call). The first two
//! steps have orders 1 and 2, and the final steps drop to the orders the remaining steps allow.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::KSettings;
use super::ops::{add, div, mul, sub};
use super::unipc::{solve_small, unipc_coefficients};
use crate::rng::NoiseSource;
use crate::Result;

/// A1111's default order, also the fewest steps it runs.
pub(crate) const ORDER: usize = 3;

/// The discrete schedule in continuous time.
#[derive(Debug, Clone)]
struct ContinuousVp {
    /// ½ log ᾱ_i at t_i = (i + 1)/N.
    log_alpha: Vec<f64>,
}

impl ContinuousVp {
    fn new(alphas_cumprod: &[f32]) -> Self {
        Self {
            log_alpha: alphas_cumprod
                .iter()
                .map(|&a| 0.5 * f64::from(a).ln())
                .collect(),
        }
    }

    /// N, the training timesteps.
    fn n(&self) -> usize {
        self.log_alpha.len()
    }

    /// log α(t), linear between the knots and beyond the ends.
    fn log_alpha(&self, t: f64) -> f64 {
        let n = self.n();
        let knot = |i: usize| f64::from(((i + 1) as f64 / n as f64) as f32);
        // The segment [lo, lo + 1] holding t (the first or last one outside the knots).
        let above = (0..n).find(|&i| knot(i) >= t).unwrap_or(n - 1);
        let hi = above.clamp(1, n - 1);
        let lo = hi - 1;
        let (x0, x1) = (knot(lo), knot(hi));
        let (y0, y1) = (self.log_alpha[lo], self.log_alpha[hi]);
        y0 + (t - x0) * (y1 - y0) / (x1 - x0)
    }

    fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }

    fn sigma(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_alpha(t)).exp()).sqrt()
    }

    fn lambda(&self, t: f64) -> f64 {
        let la = self.log_alpha(t);
        la - 0.5 * (1.0 - (2.0 * la).exp()).ln()
    }
}

/// The corrector of the step just predicted, waiting for the model's value there.
struct Correction {
    base: Tensor,
    scale: f32,
    /// Σ ρᶜ_k D_k over the earlier points (none at order 1).
    partial: Option<Tensor>,
    last_rho: f32,
    /// m_s, the data prediction the step started from.
    start_model: Tensor,
}

/// A1111's UniPC.
pub(crate) struct A1111UniPc {
    vp: ContinuousVp,
    /// The run's continuous times, n + 1 of them.
    times: Vec<f64>,
    /// (t, m) of the latest model calls, most recent last (at most [`ORDER`]).
    history: Vec<(f64, Tensor)>,
    pending: Option<Correction>,
}

impl A1111UniPc {
    /// UniPC on the schedule `alphas_cumprod` for a run over `grid`.
    fn new(alphas_cumprod: &[f32], grid: &[usize], img2img: bool) -> Self {
        let mut unipc = Self {
            vp: ContinuousVp::new(alphas_cumprod),
            times: Vec::new(),
            history: Vec::new(),
            pending: None,
        };
        unipc.times = unipc.run_times(grid, img2img);
        unipc
    }

    /// The continuous times of a run over `grid` (as torch's f32 linspace gives them).
    fn run_times(&self, grid: &[usize], img2img: bool) -> Vec<f64> {
        let steps = grid.len();
        let n = self.vp.n() as f32;
        let end = 1.0 / n;
        let start = if img2img {
            grid[steps - 1] as f32 / 1000.0 + 1.0 / 1000.0
        } else {
            1.0
        };
        let (start, end) = (f64::from(start), f64::from(end));
        (0..=steps)
            .map(|i| {
                let t = start + (end - start) / steps as f64 * i as f64;
                f64::from(t as f32)
            })
            .collect()
    }

    /// The model's fractional timestep at continuous time `t`.
    fn model_time(&self, t: f64) -> f64 {
        let t = t as f32;
        let n = self.vp.n() as f32;
        f64::from((t - 1.0 / n) * 1000.0)
    }

    /// The order of the step that ends at point `step` of a run of `steps` steps.
    fn order_of(step: usize, steps: usize) -> usize {
        if step < ORDER {
            step
        } else {
            ORDER.min(steps + 1 - step)
        }
    }

    /// Predicts the sample at `t` from `x` with order `order`; prepares the corrector when
    /// `correct`.
    fn predict(&mut self, x: &Tensor, t: f64, order: usize, correct: bool) -> Result<Tensor> {
        let vp = &self.vp;
        let (t_s, m_s) = self.history.last().expect("a model value before any step");
        let lambda_s = vp.lambda(*t_s);
        let h = (vp.lambda(t) - lambda_s) as f32;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let (t_i, m_i) = &self.history[self.history.len() - 1 - i];
            let rk = (vp.lambda(*t_i) - lambda_s) as f32 / h;
            rks.push(rk);
            d1s.push(div(&sub(m_i, m_s)?, rk)?);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, b) = unipc_coefficients(h, order, true);
        // R_ij = r_j^i.
        let r: Vec<Vec<f32>> = (0..order)
            .map(|i| rks.iter().map(|rk| rk.powi(i as i32)).collect())
            .collect();
        let (alpha_t, sigma_t, sigma_s) = (vp.alpha(t), vp.sigma(t), vp.sigma(*t_s));
        let alpha_t = alpha_t as f32;
        let scale = alpha_t * b_h;
        let base = sub(
            &mul(x, (sigma_t / sigma_s) as f32)?,
            &mul(m_s, alpha_t * h_phi_1)?,
        )?;
        let predicted = if d1s.is_empty() {
            base.clone()
        } else {
            let rhos = if order == 2 {
                vec![0.5]
            } else {
                let sub_r = r[..order - 1].iter().map(|row| row[..order - 1].to_vec());
                solve_small(sub_r.collect(), b[..order - 1].to_vec())
            };
            sub(&base, &mul(&weighted_sum(&rhos, &d1s)?, scale)?)?
        };
        self.pending = if correct {
            let rhos = if order == 1 {
                vec![0.5]
            } else {
                solve_small(r, b)
            };
            let partial = if d1s.is_empty() {
                None
            } else {
                Some(weighted_sum(&rhos[..order - 1], &d1s)?)
            };
            Some(Correction {
                base,
                scale,
                partial,
                last_rho: rhos[order - 1],
                start_model: m_s.clone(),
            })
        } else {
            None
        };
        Ok(predicted)
    }
}

/// Σ w_k·t_k.
fn weighted_sum(weights: &[f32], tensors: &[Tensor]) -> Result<Tensor> {
    let mut sum = mul(&tensors[0], weights[0])?;
    for (w, t) in weights.iter().zip(tensors).skip(1) {
        sum = add(&sum, &mul(t, *w)?)?;
    }
    Ok(sum)
}

/// A1111's UniPC over `grid` (at least [`ORDER`] timesteps; the plan checks it).
pub(crate) fn sample_unipc(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    grid: &[usize],
    img2img: bool,
    _rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    let mut unipc = A1111UniPc::new(model.alphas_cumprod(), grid, img2img);
    let steps = unipc.times.len() - 1;
    for call in 0..steps {
        let t = unipc.times[call];
        let eps = model.eps(&x, unipc.model_time(t))?;
        let (alpha, sigma) = (unipc.vp.alpha(t) as f32, unipc.vp.sigma(t) as f32);
        let data = div(&sub(&x, &mul(&eps, sigma)?)?, alpha)?;
        if let Some(c) = unipc.pending.take() {
            let last = mul(&sub(&data, &c.start_model)?, c.last_rho)?;
            let residual = match &c.partial {
                Some(p) => add(p, &last)?,
                None => last,
            };
            x = sub(&c.base, &mul(&residual, c.scale)?)?;
        }
        unipc.history.push((t, data));
        if unipc.history.len() > ORDER {
            unipc.history.remove(0);
        }
        let next = call + 1;
        x = unipc.predict(
            &x,
            unipc.times[next],
            A1111UniPc::order_of(next, steps),
            next < steps,
        )?;
        model.step_done(call, &x, None)?;
    }
    Ok(x)
}

//! UniPC (diffusers' `UniPCMultistepScheduler`, `solver_type="bh2"`, order 2, data
//! prediction; A1111's "UniPC"): a multistep predictor (UniP) followed, at the next step, by a
//! corrector (UniC) that reuses the new model evaluation to refine the sample the predictor
//! produced — so the correction costs no extra model call.
//!
//! In log-SNR time λ with h = λ_t − λ_s and the data predictions m, both updates take the form
//! x_t = (σ_t/σ_s)·x − α_t·(e^{−h} − 1)·m₀ − α_t·B(h)·Σ ρ_k·D_k, B(h) = e^{−h} − 1 ("bh2"),
//! where D_k are scaled differences of earlier predictions and the weights ρ solve a small
//! Vandermonde system in the step ratios r_k.

use candle_core::Tensor;

use super::ops::{add, div, mul, sub};
use super::vp::{lambda, vp_sampler_basics, VpSteps};
use super::{check_step, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The solver order (diffusers' default for UniPC).
const ORDER: usize = 2;

/// Solves the small system `a · x = b` in f32 by Gaussian elimination with partial pivoting
/// (as LAPACK's `sgesv`, which `torch.linalg.solve` calls).
pub(crate) fn solve_small(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            let (above, below) = a.split_at_mut(row);
            for (target, pivot) in below[0][col..n].iter_mut().zip(&above[col][col..n]) {
                *target -= factor * pivot;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0f32; n];
    for row in (0..n).rev() {
        let mut acc = b[row];
        for k in row + 1..n {
            acc -= a[row][k] * x[k];
        }
        x[row] = acc / a[row][row];
    }
    x
}

/// The coefficients of one UniP/UniC update of `order` from λ_s to λ_t (h = λ_t − λ_s, data
/// prediction): hφ₁ = e^{−h} − 1, B(h) (variant bh2: e^{−h} − 1; bh1: −h) and the right-hand
/// sides b_k.
pub(crate) fn unipc_coefficients(h: f32, order: usize, bh1: bool) -> (f32, f32, Vec<f32>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = if bh1 { hh } else { hh.exp_m1() };
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0f32;
    let mut rhs = Vec::with_capacity(order);
    for i in 1..=order {
        rhs.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f32;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (h_phi_1, b_h, rhs)
}

/// UniPC sampling (bh2, order 2, data prediction).
#[derive(Debug, Clone)]
pub struct UniPc {
    vp: VpSteps,
    lower_order_final: bool,
    /// The data predictions of the last steps, newest last.
    outputs: Vec<Tensor>,
    /// The sample the last predictor started from (the corrector redoes that step).
    last_sample: Option<Tensor>,
    /// The order of the last predictor step.
    last_order: usize,
}

impl UniPc {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            vp: VpSteps::dpm_solver(cfg, steps, true)?,
            lower_order_final: cfg.lower_order_final,
            outputs: Vec::new(),
            last_sample: None,
            last_order: 1,
        })
    }

    /// One update from `sigmas[from]` to `sigmas[from + 1]` starting at `x`, with the newest
    /// prediction `m0` and (for order 2) the one before, `m1` at `sigmas[from − 1]`; the
    /// corrector adds the new prediction `model_t` at the target.
    fn update(
        &self,
        x: &Tensor,
        from: usize,
        order: usize,
        m0: &Tensor,
        m1: Option<&Tensor>,
        model_t: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t) = self.vp.alpha_sigma(from + 1);
        let (_, sigma_s0) = self.vp.alpha_sigma(from);
        let lambda_s0 = self.vp.lambda_at(from);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let (h_phi_1, b_h, rhs) = unipc_coefficients(h, order, false);
        let base = sub(&mul(x, sigma_t / sigma_s0)?, &mul(m0, alpha_t * h_phi_1)?)?;
        // The earlier prediction's scaled difference D₁ = (m₁ − m₀) / r₁.
        let (r1, d1) = match m1 {
            Some(m1) if order >= 2 => {
                let r1 = (self.vp.lambda_at(from - 1) - lambda_s0) / h;
                (r1, Some(div(&sub(m1, m0)?, r1)?))
            }
            _ => (1.0, None),
        };
        match model_t {
            None => {
                // Predictor: ρ = 1/2 for order 2 (bh2), nothing for order 1.
                let Some(d1) = d1 else {
                    return Ok(base);
                };
                sub(&base, &mul(&mul(&d1, 0.5)?, alpha_t * b_h)?)
            }
            Some(model_t) => {
                let d1_t = sub(model_t, m0)?;
                let correction = match d1 {
                    None => mul(&d1_t, 0.5)?,
                    Some(d1) => {
                        let rhos = solve_small(vec![vec![1.0, 1.0], vec![r1, 1.0]], rhs);
                        add(&mul(&d1, rhos[0])?, &mul(&d1_t, rhos[1])?)?
                    }
                };
                sub(&base, &mul(&correction, alpha_t * b_h)?)
            }
        }
    }
}

impl Sampler for UniPc {
    vp_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.vp.timesteps.len())?;
        let x0 = self.vp.data_prediction(model_output, sample, step)?;
        // UniC: redo the last step with the new prediction at its end.
        let sample = match self.last_sample.take() {
            Some(last) if step > 0 => {
                let n = self.outputs.len();
                let m1 = (n >= 2).then(|| &self.outputs[n - 2]);
                self.update(
                    &last,
                    step - 1,
                    self.last_order,
                    &self.outputs[n - 1],
                    m1,
                    Some(&x0),
                )?
            }
            _ => sample.clone(),
        };
        self.outputs.push(x0);
        if self.outputs.len() > ORDER {
            self.outputs.remove(0);
        }
        let remaining = self.vp.timesteps.len() - step;
        let order = if self.lower_order_final {
            ORDER.min(remaining)
        } else {
            ORDER
        };
        let order = order.min(self.outputs.len());
        // UniP: predict the next sample.
        let n = self.outputs.len();
        let m1 = (n >= 2).then(|| &self.outputs[n - 2]);
        let next = self.update(&sample, step, order, &self.outputs[n - 1], m1, None)?;
        self.last_sample = Some(sample);
        self.last_order = order;
        Ok(next)
    }

    fn reset(&mut self) {
        self.outputs.clear();
        self.last_sample = None;
        self.last_order = 1;
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::UniPc
    }
}

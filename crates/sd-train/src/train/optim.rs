//! AdamW with state that can be saved, gradient clipping by global norm, and EMA weights.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use stable_diffusion::Result;

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices and kernels (rank ≥ 2) only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW over a fixed list of variables, with moments exposed for checkpoints.
pub struct AdamW {
    vars: Vec<Var>,
    /// First moments, one per variable.
    pub m: Vec<Tensor>,
    /// Second moments, one per variable.
    pub v: Vec<Tensor>,
    /// Updates done so far.
    pub t: usize,
    config: AdamWConfig,
}

impl AdamW {
    /// Fresh optimizer state for `vars`.
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            config,
        })
    }

    /// The gradients of every variable (zeros where the loss does not depend on one).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .map(|var| match grads.get(var.as_tensor()) {
                // Detached: a gradient computed from variables records its own graph, and
                // moments built from it would otherwise keep every step's graph alive.
                Some(g) => Ok(g.detach()),
                None => Ok(var.zeros_like()?),
            })
            .collect()
    }

    /// One update with `gradients` (one per variable) at learning rate `lr`.
    pub fn step(&mut self, gradients: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.t as i32);
        let bias2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, var) in self.vars.iter().enumerate() {
            let g = &gradients[i];
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor();
            let decayed = if theta.rank() >= 2 && c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// The global L2 norm of `gradients`; when above `max_norm`, scales them down to it.
/// Returns the norm before clipping.
pub fn clip_global_norm(gradients: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in gradients.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in gradients.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// An exponential moving average of the weights, with the usual warm-up
/// `decay_t = min(decay, (1 + t) / (10 + t))`.
pub struct Ema {
    /// The averaged weights, one per variable.
    pub weights: Vec<Tensor>,
    decay: f64,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(vars: &[Var], decay: f64) -> Result<Self> {
        let weights = vars
            .iter()
            .map(|v| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { weights, decay })
    }

    /// Folds the current weights in after update number `t` (1-based).
    pub fn update(&mut self, vars: &[Var], t: usize) -> Result<()> {
        let decay = self.decay.min((1.0 + t as f64) / (10.0 + t as f64));
        for (avg, var) in self.weights.iter_mut().zip(vars) {
            *avg = ((&*avg * decay)? + (var.as_tensor().detach() * (1.0 - decay))?)?.detach();
        }
        Ok(())
    }
}

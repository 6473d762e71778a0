//! AUTOMATIC1111's "DDIM CFG++" (`ddim_cfgpp` in its `sd_samplers_timesteps_impl`, after
//! CFG++: manifold-constrained classifier-free guidance, Chung et al. 2024), on the grid of
//! [`super::a1111_timesteps`].
//!
//! DDIM's loop ([`super::a1111_ddim`]) with two changes: the guidance scale is divided by 12.5
//! (so CFG 0 … 12.5 maps to 0 … 1), and the jump back to the next noise level runs along the
//! unconditional ε of the same model call, the clean-sample estimate along the guided one:
//!
//! ```text
//! ε_g = ε_u + (s / 12.5)·(ε_c − ε_u)
//! x₀  = (x − sqrt(1 − ᾱ_k)·ε_g) / sqrt(ᾱ_k)
//! x  ← sqrt(ᾱ_{k−1})·x₀ + sqrt(1 − ᾱ_{k−1} − σ²)·ε_u + σ·z
//! ```
//!
//! Every model call needs the unconditional prediction, whatever the CFG scale (its catalog row
//! says so); η is DDIM's ("Eta DDIM", default 0).

use candle_core::Tensor;

use super::a1111_ddim::ddim_loop;
use super::denoiser::Denoiser;
use super::kdiff::KSettings;
use crate::rng::NoiseSource;
use crate::Result;

/// What CFG++ multiplies the guidance scale by (A1111's `cond_scale_miltiplier`).
pub const CFG_SCALE_MULTIPLIER: f64 = 1.0 / 12.5;

/// A1111's DDIM CFG++ with noise amount η (`settings.eta`).
pub(crate) fn sample_ddim_cfgpp(
    model: &mut Denoiser<'_>,
    x: Tensor,
    grid: &[usize],
    _img2img: bool,
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    ddim_loop(model, x, grid, rng, settings.eta, |model, x, t| {
        let eps = model.eps_with_uncond(x, t, CFG_SCALE_MULTIPLIER)?;
        Ok((eps.guided, eps.uncond))
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::rng::TorchCpuRng;
    use crate::scheduler::a1111_ddim::sample_ddim;
    use crate::scheduler::a1111_timesteps::{a1111_grid, TimestepSampler};
    use crate::scheduler::denoiser::{GuidedPrediction, Model, StepInfo};
    use crate::scheduler::kdiff::Churn;
    use crate::scheduler::{BetaSchedule, NoiseSchedule, PredictionType};

    /// A stand-in for a guided UNet: ε_c = 0.9·tanh(x) + t/20000, ε_u = 0.5·x − 0.1, mixed
    /// with guidance scale `scale`; it records the multiplier each call asked for.
    struct TwoPrompts {
        scale: f64,
        multipliers: Vec<f64>,
        inputs: Vec<Tensor>,
    }

    impl TwoPrompts {
        fn new(scale: f64) -> Self {
            Self {
                scale,
                multipliers: Vec::new(),
                inputs: Vec::new(),
            }
        }

        fn cond(x: &Tensor, t: f64) -> Tensor {
            x.tanh().unwrap().affine(0.9, t / 20000.0).unwrap()
        }

        fn uncond(x: &Tensor) -> Tensor {
            x.affine(0.5, -0.1).unwrap()
        }

        fn mix(x: &Tensor, t: f64, scale: f64) -> Tensor {
            let (c, u) = (Self::cond(x, t), Self::uncond(x));
            (&u + ((&c - &u).unwrap() * scale).unwrap()).unwrap()
        }
    }

    impl Model for TwoPrompts {
        fn predict(&mut self, input: &Tensor, timestep: f64) -> Result<Tensor> {
            self.multipliers.push(1.0);
            self.inputs.push(input.clone());
            Ok(Self::mix(input, timestep, self.scale))
        }

        fn predict_with_uncond(
            &mut self,
            input: &Tensor,
            timestep: f64,
            scale_multiplier: f64,
        ) -> Result<GuidedPrediction> {
            self.multipliers.push(scale_multiplier);
            self.inputs.push(input.clone());
            Ok(GuidedPrediction {
                guided: Self::mix(input, timestep, self.scale * scale_multiplier),
                uncond: Self::uncond(input),
            })
        }

        fn step_done(&mut self, _step: &StepInfo<'_>) -> Result<()> {
            Ok(())
        }
    }

    /// Only the unconditional branch, as a plain model (what CFG 0 must reduce to).
    struct UncondOnly;

    impl Model for UncondOnly {
        fn predict(&mut self, input: &Tensor, _timestep: f64) -> Result<Tensor> {
            Ok(TwoPrompts::uncond(input))
        }

        fn step_done(&mut self, _step: &StepInfo<'_>) -> Result<()> {
            Ok(())
        }
    }

    fn sd15_alphas() -> Vec<f32> {
        NoiseSchedule::new(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000, None)
            .unwrap()
            .alphas_cumprod
    }

    fn settings(eta: f32) -> KSettings {
        KSettings {
            eta,
            churn: Churn::default(),
        }
    }

    fn start() -> Tensor {
        TorchCpuRng::new(11)
            .randn(&[1, 4, 3, 3], &Device::Cpu)
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn run(model: &mut dyn Model, grid: &[usize], eta: f32, ddim: bool) -> Tensor {
        let table = sd15_alphas();
        let mut denoiser = Denoiser::timesteps(model, &table, PredictionType::Epsilon, None);
        let mut rng = TorchCpuRng::new(5);
        let sample: TimestepSampler = if ddim { sample_ddim } else { sample_ddim_cfgpp };
        sample(
            &mut denoiser,
            start(),
            grid,
            false,
            &mut rng,
            &settings(eta),
        )
        .unwrap()
    }

    #[test]
    fn one_step_is_the_cfgpp_formula() {
        // A two-timestep grid is one step, from grid[1] to grid[0].
        let grid = [1usize, 501];
        let table = sd15_alphas();
        let scale = 7.5;
        let mut model = TwoPrompts::new(scale);
        let out = values(&run(&mut model, &grid, 0.0, false));
        assert_eq!(model.multipliers, vec![0.08]);
        // The formula, element by element in f64.
        let (a_t, a_prev) = (f64::from(table[501]), f64::from(table[1]));
        let x = values(&start());
        let s = scale / 12.5;
        for (i, (&xi, &got)) in x.iter().zip(&out).enumerate() {
            let xi = f64::from(xi);
            let cond = 0.9 * xi.tanh() + 501.0 / 20000.0;
            let uncond = 0.5 * xi - 0.1;
            let guided = uncond + s * (cond - uncond);
            let x0 = (xi - (1.0 - a_t).sqrt() * guided) / a_t.sqrt();
            let expected = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * uncond;
            assert!(
                (f64::from(got) - expected).abs() < 1e-4,
                "element {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn cfg_zero_is_ddim_on_the_unconditional_prediction() {
        let grid = a1111_grid(6, 1000);
        for eta in [0.0, 0.6] {
            let cfgpp = run(&mut TwoPrompts::new(0.0), &grid, eta, false);
            let ddim = run(&mut UncondOnly, &grid, eta, true);
            assert_eq!(values(&cfgpp), values(&ddim), "eta {eta}");
        }
    }

    #[test]
    fn it_differs_from_ddim_with_the_same_guidance() {
        // DDIM with the divided scale takes the guided ε for the direction too.
        let grid = a1111_grid(6, 1000);
        let cfgpp = values(&run(&mut TwoPrompts::new(7.5), &grid, 0.0, false));
        let ddim = values(&run(&mut TwoPrompts::new(0.6), &grid, 0.0, true));
        let diff = cfgpp
            .iter()
            .zip(&ddim)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff > 1e-3, "max diff {diff}");
    }

    #[test]
    fn a_model_without_guidance_steps_like_ddim() {
        // The default `predict_with_uncond` returns the one output as both.
        let grid = a1111_grid(5, 1000);
        assert_eq!(
            values(&run(&mut UncondOnly, &grid, 0.0, false)),
            values(&run(&mut UncondOnly, &grid, 0.0, true))
        );
    }

    #[test]
    fn v_prediction_turns_both_outputs_into_eps() {
        let table = sd15_alphas();
        let mut model = TwoPrompts::new(12.5);
        let x = start();
        let mut denoiser =
            Denoiser::timesteps(&mut model, &table, PredictionType::VPrediction, None);
        let eps = denoiser
            .eps_with_uncond(&x, 400.0, CFG_SCALE_MULTIPLIER)
            .unwrap();
        let a = table[400];
        let to_eps = |v: &Tensor| {
            values(&(v * f64::from(a.sqrt())).unwrap())
                .iter()
                .zip(values(&(&x * f64::from((1.0 - a).sqrt())).unwrap()))
                .map(|(p, q)| p + q)
                .collect::<Vec<f32>>()
        };
        // 12.5 · (1 / 12.5) = 1: the guided output is the conditional one.
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5);
        assert!(close(
            &values(&eps.guided),
            &to_eps(&TwoPrompts::cond(&x, 400.0))
        ));
        assert!(close(
            &values(&eps.uncond),
            &to_eps(&TwoPrompts::uncond(&x))
        ));
    }
}

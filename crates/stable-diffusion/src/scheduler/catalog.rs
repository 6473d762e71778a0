//! The sampler catalog: one row per sampler with everything the parser, `sd samplers`, the
//! infotext and the flavor logic ask about it. [`SamplerKind`] is made from the rows, so adding
//! a sampler means one row here and its own file (declared beside the others in `mod.rs`).

use super::a1111_timesteps::TimestepSampler;
use super::kdiff::SigmaSampler;
use super::{
    a1111_ddim, a1111_ddim_cfgpp, a1111_unipc, ddim, ddpm, deis, dpm2, dpmpp_2m, dpmpp_2s,
    dpmpp_sde, euler, euler_a, heun, k_dpm_solver, k_dpmpp, k_euler, k_heun, k_lcm, k_lms,
    k_restart, lcm, lms, pndm, tcd, unipc, ResolvedConfig, Sampler, SigmaSchedule, ZeroSnr,
};
use crate::Result;

/// What a diffusers scheduler class is built from besides its config and step count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusersSettings {
    /// DDIM's eta, TCD's gamma.
    pub eta: f64,
    /// Euler's churn and the SDE samplers' noise scale.
    pub churn: super::kdiff::Churn,
}

/// Builds a diffusers scheduler class for a resolved config and a step count.
pub type DiffusersBuild =
    fn(&ResolvedConfig, usize, &DiffusersSettings) -> Result<Box<dyn Sampler>>;

/// A sampler's diffusers flavor: the class it mirrors and its constructor.
#[derive(Debug, Clone, Copy)]
pub struct DiffusersImpl {
    /// The diffusers class name.
    pub class: &'static str,
    /// Builds it.
    pub build: DiffusersBuild,
}

/// How a sampler's k-diffusion flavor runs.
#[derive(Debug, Clone, Copy)]
pub enum KRun {
    /// A k-diffusion sampler on a sigma list.
    Sigmas(SigmaSampler),
    /// One of A1111's own samplers on its integer timestep grid.
    Timesteps {
        /// The loop.
        sample: TimestepSampler,
        /// The fewest grid timesteps it runs on.
        min_steps: usize,
        /// How many steps it takes on a grid of `m` timesteps.
        steps_on_grid: fn(usize) -> usize,
    },
}

/// A sampler's k-diffusion flavor: the function it mirrors and how it runs.
#[derive(Debug, Clone, Copy)]
pub struct KDiffusionImpl {
    /// The k-diffusion function (or A1111 sampler) name.
    pub function: &'static str,
    /// The loop.
    pub run: KRun,
}

/// What is known about one sampler.
#[derive(Debug, Clone, Copy)]
pub struct SamplerInfo {
    /// The sampler.
    pub kind: SamplerKind,
    /// The name used on the command line and in requests ("euler_a", ...).
    pub name: &'static str,
    /// The name AUTOMATIC1111's web UI shows (and writes into PNG infotext).
    pub a1111_name: &'static str,
    /// A1111's old alias (`k_dpmpp_2m`, ...), which also selects the k-diffusion flavor.
    pub a1111_alias: Option<&'static str>,
    /// Further names of ours that select it (`plms` for PNDM), flavor left open.
    pub other_names: &'static [&'static str],
    /// One line saying what the sampler does (for `sd samplers`).
    pub description: &'static str,
    /// The diffusers scheduler class it mirrors in the diffusers flavor.
    pub diffusers: Option<DiffusersImpl>,
    /// The k-diffusion function (or A1111 sampler) it runs in the k-diffusion flavor.
    pub kdiffusion: Option<KDiffusionImpl>,
    /// Whether A1111 marks it second-order (two model evaluations per step).
    pub evaluates_twice_per_step: bool,
    /// Whether it walks its own discrete timesteps and takes no sigma schedule.
    pub walks_own_timesteps: bool,
    /// Whether (and how) the diffusers class rescales the betas to zero terminal SNR.
    pub zero_snr: Option<ZeroSnr>,
    /// The schedule A1111's "Automatic" picks for it (k-diffusion flavor).
    pub a1111_default_schedule: SigmaSchedule,
    /// Whether A1111 plans one extra step and drops the next-to-last sigma.
    pub discards_next_to_last_sigma: bool,
    /// Whether every model call needs the unconditional prediction beside the guided one,
    /// whatever the CFG scale (CFG++ samplers step along it).
    pub needs_uncond: bool,
}

impl SamplerInfo {
    /// What a row leaves unsaid: no alias, no flavor, one model call per step, a sigma
    /// schedule, no zero-SNR rescaling, A1111's "Uniform" as its automatic schedule. Every row
    /// sets its kind, names and description (the catalog test checks them).
    const DEFAULTS: SamplerInfo = SamplerInfo {
        kind: SamplerKind::Euler,
        name: "",
        a1111_name: "",
        a1111_alias: None,
        other_names: &[],
        description: "",
        diffusers: None,
        kdiffusion: None,
        evaluates_twice_per_step: false,
        walks_own_timesteps: false,
        zero_snr: None,
        a1111_default_schedule: SigmaSchedule::Discrete,
        discards_next_to_last_sigma: false,
        needs_uncond: false,
    };
}

/// Makes [`SamplerKind`] (one variant per row, in the rows' order) and [`CATALOG`] from the
/// rows: `Variant { field: value, ... }` with the fields of [`SamplerInfo`] that differ from
/// [`SamplerInfo::DEFAULTS`].
macro_rules! samplers {
    ($($(#[doc = $doc:literal])+ $kind:ident { $($field:ident: $value:expr),* $(,)? }),* $(,)?) => {
        /// The samplers this library implements (one per row of [`CATALOG`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SamplerKind {
            $($(#[doc = $doc])+ $kind,)*
        }

        impl SamplerKind {
            /// Every sampler, in display order (the catalog's).
            pub const ALL: [SamplerKind; [$(SamplerKind::$kind),*].len()] =
                [$(SamplerKind::$kind),*];

            /// This sampler's row of the catalog.
            pub fn info(&self) -> &'static SamplerInfo {
                // The variants are declared in the rows' order.
                &CATALOG[*self as usize]
            }
        }

        /// Every sampler, in display order.
        pub const CATALOG: [SamplerInfo; SamplerKind::ALL.len()] = [$(SamplerInfo {
            kind: SamplerKind::$kind,
            $($field: $value,)*
            ..SamplerInfo::DEFAULTS
        },)*];
    };
}

samplers! {
    /// Euler's method on the probability-flow ODE (k-diffusion's `sample_euler`).
    Euler {
        name: "euler",
        a1111_name: "Euler",
        a1111_alias: Some("k_euler"),
        description: "Euler steps on the probability-flow ODE; --s-churn adds Karras's churn",
        diffusers: Some(DiffusersImpl {
            class: "EulerDiscreteScheduler",
            build: |c, n, s| Ok(Box::new(euler::Euler::new(c, n)?.with_churn(s.churn))),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_euler",
            run: KRun::Sigmas(k_euler::sample_euler),
        }),
        zero_snr: Some(ZeroSnr::Floored),
    },
    /// Euler ancestral: Euler steps plus fresh noise each step.
    EulerA {
        name: "euler_a",
        a1111_name: "Euler a",
        a1111_alias: Some("k_euler_a"),
        description: "Euler ancestral: Euler steps plus fresh noise each step (--eta)",
        diffusers: Some(DiffusersImpl {
            class: "EulerAncestralDiscreteScheduler",
            build: |c, n, _| Ok(Box::new(euler_a::EulerAncestral::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_euler_ancestral",
            run: KRun::Sigmas(k_euler::sample_euler_ancestral),
        }),
        zero_snr: Some(ZeroSnr::Floored),
    },
    /// Heun's second-order method (two model evaluations per step).
    Heun {
        name: "heun",
        a1111_name: "Heun",
        a1111_alias: Some("k_heun"),
        description: "Heun: second order, two model calls per step; --s-churn supported",
        diffusers: Some(DiffusersImpl {
            class: "HeunDiscreteScheduler",
            build: |c, n, _| Ok(Box::new(heun::Heun::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_heun",
            run: KRun::Sigmas(k_heun::sample_heun),
        }),
        evaluates_twice_per_step: true,
    },
    /// k-diffusion's DPM2 (midpoint second-order steps).
    Dpm2 {
        name: "dpm2",
        a1111_name: "DPM2",
        a1111_alias: Some("k_dpm_2"),
        description: "DPM2: second order through the log-sigma midpoint, two calls per step",
        diffusers: Some(DiffusersImpl {
            class: "KDPM2DiscreteScheduler",
            build: |c, n, _| Ok(Box::new(dpm2::Dpm2::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpm_2",
            run: KRun::Sigmas(k_heun::sample_dpm_2),
        }),
        evaluates_twice_per_step: true,
        a1111_default_schedule: SigmaSchedule::Karras,
        discards_next_to_last_sigma: true,
    },
    /// DPM2 with ancestral noise.
    Dpm2A {
        name: "dpm2_a",
        a1111_name: "DPM2 a",
        a1111_alias: Some("k_dpm_2_a"),
        description: "DPM2 ancestral: DPM2 steps plus fresh noise",
        diffusers: Some(DiffusersImpl {
            class: "KDPM2AncestralDiscreteScheduler",
            build: |c, n, _| Ok(Box::new(dpm2::Dpm2::ancestral(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpm_2_ancestral",
            run: KRun::Sigmas(k_heun::sample_dpm_2_ancestral),
        }),
        evaluates_twice_per_step: true,
        a1111_default_schedule: SigmaSchedule::Karras,
        discards_next_to_last_sigma: true,
    },
    /// Linear multistep (order 4).
    Lms {
        name: "lms",
        a1111_name: "LMS",
        a1111_alias: Some("k_lms"),
        description: "Linear multistep of order 4 on the sigma ODE",
        diffusers: Some(DiffusersImpl {
            class: "LMSDiscreteScheduler",
            build: |c, n, _| Ok(Box::new(lms::Lms::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_lms",
            run: KRun::Sigmas(k_lms::sample_lms),
        }),
    },
    /// DPM-Solver++ (2M): second-order multistep on the data prediction.
    DpmPp2M {
        name: "dpmpp_2m",
        a1111_name: "DPM++ 2M",
        a1111_alias: Some("k_dpmpp_2m"),
        description: "DPM-Solver++ 2M: second-order multistep, sharp in few steps",
        diffusers: Some(DiffusersImpl {
            class: "DPMSolverMultistepScheduler",
            build: |c, n, _| Ok(Box::new(dpmpp_2m::DpmPp2M::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_2m",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_2m),
        }),
        zero_snr: Some(ZeroSnr::Floored),
        a1111_default_schedule: SigmaSchedule::Karras,
    },
    /// DPM-Solver++ (2S) single-step, second order in pairs of steps (no noise).
    DpmPp2S {
        name: "dpmpp_2s",
        a1111_name: "DPM++ 2S",
        description: "DPM-Solver++ 2S: single-step second order, steps in pairs",
        diffusers: Some(DiffusersImpl {
            class: "DPMSolverSinglestepScheduler",
            build: |c, n, _| Ok(Box::new(dpmpp_2s::DpmPp2S::new(c, n)?)),
        }),
    },
    /// DPM-Solver++ (2S) single-step with ancestral noise.
    DpmPp2SA {
        name: "dpmpp_2s_a",
        a1111_name: "DPM++ 2S a",
        a1111_alias: Some("k_dpmpp_2s_a"),
        description: "DPM-Solver++ 2S ancestral: single-step second order plus noise",
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_2s_ancestral",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_2s_ancestral),
        }),
        evaluates_twice_per_step: true,
        a1111_default_schedule: SigmaSchedule::Karras,
    },
    /// Stochastic DPM-Solver++ (two evaluations per step, noise after each).
    DpmPpSde {
        name: "dpmpp_sde",
        a1111_name: "DPM++ SDE",
        a1111_alias: Some("k_dpmpp_sde"),
        description: "DPM-Solver++ SDE: stochastic, two calls per step",
        diffusers: Some(DiffusersImpl {
            class: "DPMSolverSDEScheduler",
            build: |c, n, s| Ok(Box::new(dpmpp_sde::DpmPpSde::new(c, n, s.churn.s_noise)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_sde",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_sde),
        }),
        evaluates_twice_per_step: true,
        a1111_default_schedule: SigmaSchedule::Karras,
    },
    /// DPM-Solver++ (2M) SDE, midpoint correction.
    DpmPp2MSde {
        name: "dpmpp_2m_sde",
        a1111_name: "DPM++ 2M SDE",
        a1111_alias: Some("k_dpmpp_2m_sde"),
        description: "DPM-Solver++ 2M SDE: 2M with SDE noise (midpoint)",
        diffusers: Some(DiffusersImpl {
            class: "DPMSolverMultistepScheduler",
            build: |c, n, _| {
                Ok(Box::new(dpmpp_2m::DpmPp2M::sde(
                    &ResolvedConfig {
                        heun: false,
                        ..c.clone()
                    },
                    n,
                )?))
            },
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_2m_sde",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_2m_sde),
        }),
        zero_snr: Some(ZeroSnr::Floored),
        a1111_default_schedule: SigmaSchedule::Exponential,
    },
    /// DPM-Solver++ (2M) SDE, Heun correction.
    DpmPp2MSdeHeun {
        name: "dpmpp_2m_sde_heun",
        a1111_name: "DPM++ 2M SDE Heun",
        a1111_alias: Some("k_dpmpp_2m_sde_heun"),
        description: "DPM-Solver++ 2M SDE with the Heun-type correction",
        diffusers: Some(DiffusersImpl {
            class: "DPMSolverMultistepScheduler",
            build: |c, n, _| {
                Ok(Box::new(dpmpp_2m::DpmPp2M::sde(
                    &ResolvedConfig {
                        heun: true,
                        ..c.clone()
                    },
                    n,
                )?))
            },
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_2m_sde",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_2m_sde_heun),
        }),
        zero_snr: Some(ZeroSnr::Floored),
        a1111_default_schedule: SigmaSchedule::Exponential,
    },
    /// DPM-Solver++ (3M) SDE.
    DpmPp3MSde {
        name: "dpmpp_3m_sde",
        a1111_name: "DPM++ 3M SDE",
        a1111_alias: Some("k_dpmpp_3m_sde"),
        description: "DPM-Solver++ 3M SDE: third-order multistep with SDE noise",
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpmpp_3m_sde",
            run: KRun::Sigmas(k_dpmpp::sample_dpmpp_3m_sde),
        }),
        a1111_default_schedule: SigmaSchedule::Exponential,
        discards_next_to_last_sigma: true,
    },
    /// DPM-Solver-fast: fixed steps of orders 3, 2 and 1 in log sigma (k-diffusion).
    DpmFast {
        name: "dpm_fast",
        a1111_name: "DPM fast",
        a1111_alias: Some("k_dpm_fast"),
        description:
            "DPM-Solver-fast: orders 3/2/1 on an even log-sigma grid, ends at sigma_min (--eta)",
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpm_fast",
            run: KRun::Sigmas(k_dpm_solver::sample_dpm_fast),
        }),
    },
    /// DPM-Solver-23 with adaptive step size (k-diffusion).
    DpmAdaptive {
        name: "dpm_adaptive",
        a1111_name: "DPM adaptive",
        a1111_alias: Some("k_dpm_ad"),
        description:
            "DPM-Solver-23 with adaptive step size: ignores the step count, ends at sigma_min",
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_dpm_adaptive",
            run: KRun::Sigmas(k_dpm_solver::sample_dpm_adaptive),
        }),
    },
    /// A1111's Restart sampler: Heun steps with jumps back up to a higher noise level.
    Restart {
        name: "restart",
        a1111_name: "Restart",
        description:
            "Restart (A1111): Heun steps, from 20 steps with jumps back from sigma 0.1 to 2",
        kdiffusion: Some(KDiffusionImpl {
            function: "restart_sampler (A1111)",
            run: KRun::Sigmas(k_restart::sample_restart),
        }),
        evaluates_twice_per_step: true,
        a1111_default_schedule: SigmaSchedule::Karras,
    },
    /// Improved PNDM: Adams–Bashforth steps on the sigma ODE.
    Ipndm {
        name: "ipndm",
        a1111_name: "iPNDM",
        a1111_alias: Some("k_ipndm"),
        description: "Improved PNDM: fourth-order Adams-Bashforth on the sigma ODE",
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_ipndm",
            run: KRun::Sigmas(k_lms::sample_ipndm),
        }),
    },
    /// UniPC: multistep predictor with a free corrector (bh2, order 2).
    UniPc {
        name: "unipc",
        a1111_name: "UniPC",
        description: "UniPC: predictor-corrector multistep (bh2 order 2; A1111: bh1 order 3)",
        diffusers: Some(DiffusersImpl {
            class: "UniPCMultistepScheduler",
            build: |c, n, _| Ok(Box::new(unipc::UniPc::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "uni_pc bh1 (A1111)",
            run: KRun::Timesteps {
                sample: a1111_unipc::sample_unipc,
                min_steps: a1111_unipc::ORDER,
                steps_on_grid: |m| m,
            },
        }),
        zero_snr: Some(ZeroSnr::Floored),
    },
    /// DEIS: exponential-integrator multistep (log-rho, order 2).
    Deis {
        name: "deis",
        a1111_name: "DEIS",
        description: "DEIS: exponential-integrator multistep in log rho (order 2)",
        diffusers: Some(DiffusersImpl {
            class: "DEISMultistepScheduler",
            build: |c, n, _| Ok(Box::new(deis::Deis::new(c, n)?)),
        }),
    },
    /// DDIM (with `eta` for stochastic sampling).
    Ddim {
        name: "ddim",
        a1111_name: "DDIM",
        description: "DDIM: deterministic implicit steps (eta > 0 adds DDPM-like noise)",
        diffusers: Some(DiffusersImpl {
            class: "DDIMScheduler",
            build: |c, n, s| Ok(Box::new(ddim::Ddim::new(c, n, s.eta)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "ddim (A1111 timesteps)",
            run: KRun::Timesteps {
                sample: a1111_ddim::sample_ddim,
                min_steps: 0,
                steps_on_grid: |m| m.saturating_sub(1),
            },
        }),
        walks_own_timesteps: true,
        zero_snr: Some(ZeroSnr::Exact),
    },
    /// A1111's DDIM CFG++: DDIM stepping along the unconditional prediction, CFG scale / 12.5.
    DdimCfgPp {
        name: "ddim_cfgpp",
        a1111_name: "DDIM CFG++",
        description: "DDIM with CFG++: steps along the unconditional eps, CFG scale / 12.5 (A1111)",
        kdiffusion: Some(KDiffusionImpl {
            function: "ddim_cfgpp (A1111)",
            run: KRun::Timesteps {
                sample: a1111_ddim_cfgpp::sample_ddim_cfgpp,
                min_steps: 0,
                steps_on_grid: |m| m.saturating_sub(1),
            },
        }),
        walks_own_timesteps: true,
        needs_uncond: true,
    },
    /// PNDM's pseudo linear multistep method (PLMS), as diffusers' `PNDMScheduler` runs it with
    /// `skip_prk_steps=True`.
    Pndm {
        name: "pndm",
        a1111_name: "PLMS",
        other_names: &["plms"],
        description: "PLMS: pseudo linear multistep (Adams-Bashforth on eps), alias plms",
        diffusers: Some(DiffusersImpl {
            class: "PNDMScheduler",
            build: |c, n, _| Ok(Box::new(pndm::Plms::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "plms (A1111 timesteps)",
            run: KRun::Timesteps {
                sample: a1111_ddim::sample_plms,
                min_steps: 0,
                steps_on_grid: |m| m.saturating_sub(1),
            },
        }),
        walks_own_timesteps: true,
    },
    /// DDPM's ancestral sampling (posterior mean plus noise).
    Ddpm {
        name: "ddpm",
        a1111_name: "DDPM",
        description: "DDPM: ancestral posterior steps with noise; needs many steps",
        diffusers: Some(DiffusersImpl {
            class: "DDPMScheduler",
            build: |c, n, _| Ok(Box::new(ddpm::Ddpm::new(c, n, c.ddpm_variance)?)),
        }),
        walks_own_timesteps: true,
        zero_snr: Some(ZeroSnr::Exact),
    },
    /// Latent Consistency Model sampling (for LCM-distilled models and LoRAs).
    Lcm {
        name: "lcm",
        a1111_name: "LCM",
        description: "LCM: consistency steps for LCM models/LoRAs (2-8 steps, CFG ~1-2)",
        diffusers: Some(DiffusersImpl {
            class: "LCMScheduler",
            build: |c, n, _| Ok(Box::new(lcm::Lcm::new(c, n)?)),
        }),
        kdiffusion: Some(KDiffusionImpl {
            function: "sample_lcm (A1111)",
            run: KRun::Sigmas(k_lcm::sample_lcm),
        }),
        walks_own_timesteps: true,
        zero_snr: Some(ZeroSnr::Exact),
    },
    /// Trajectory Consistency Distillation sampling (for TCD-distilled models and LoRAs).
    Tcd {
        name: "tcd",
        a1111_name: "TCD",
        description: "TCD: trajectory consistency steps for TCD models/LoRAs; --eta is gamma (0.3)",
        diffusers: Some(DiffusersImpl {
            class: "TCDScheduler",
            build: |c, n, s| Ok(Box::new(tcd::Tcd::new(c, n, s.eta)?)),
        }),
        walks_own_timesteps: true,
        zero_snr: Some(ZeroSnr::Exact),
    },
}

#[cfg(test)]
mod tests {
    use super::CATALOG;

    #[test]
    fn every_row_is_a_different_sampler_with_its_own_names() {
        for (i, row) in CATALOG.iter().enumerate() {
            for other in &CATALOG[..i] {
                assert_ne!(row.kind, other.kind, "{} twice", row.name);
                assert_ne!(row.name, other.name);
                assert_ne!(row.a1111_name, other.a1111_name);
                assert!(row.a1111_alias.is_none() || row.a1111_alias != other.a1111_alias);
            }
            assert!(!row.name.is_empty() && !row.a1111_name.is_empty());
            assert!(
                !row.description.is_empty(),
                "{} has no description",
                row.name
            );
            assert_eq!(
                row.kind.info().name,
                row.name,
                "{} does not find its row",
                row.name
            );
        }
    }
}

//! `sd samplers`: every sampler and sigma schedule, with what each is and which reference it
//! reproduces.

use anyhow::Result;
use stable_diffusion::scheduler::{SamplerKind, SigmaSchedule};

/// How names map to references, printed under the tables.
const FLAVOR_NOTE: &str = "\
Flavors: a sampler follows diffusers' scheduler class (the `diffusers` column) when it has one
and the schedule is `default` (or `karras`, for the classes with use_karras_sigmas: all but
ddim, pndm, ddpm, lcm, tcd); otherwise it follows k-diffusion's sample_* function as
AUTOMATIC1111 runs it (the `k-diffusion` column), on the sigma schedule chosen. A1111's names
(\"DPM++ 2M\", \"Euler a\") or aliases (k_dpmpp_2m) always select the k-diffusion flavor, where
`default` means A1111's \"Automatic\" (Karras for DPM++ 2M, DPM++ SDE, DPM++ 2S a, DPM2 (a);
Exponential for the 2M/3M SDE samplers; Uniform otherwise), so infotext written by A1111 re-runs
with A1111's sampling. --sampler-flavor diffusers|k-diffusion forces one.
Stochastic samplers draw their noise from the seed's generator. In the k-diffusion flavor each
image of a batch has its own (A1111's seeds: image i uses seed + i and re-makes alone from it;
--ensd N restarts them at seed + N after the initial noise); the diffusers flavor draws the whole
batch from one generator, as diffusers does. DPM++ SDE / 2M SDE / 3M SDE use i.i.d. noise where
A1111 and diffusers' DPMSolverSDE use a Brownian tree (same statistics, not the same images).
ddim, pndm, ddpm and tcd walk their own timesteps and take no sigma schedule; so does lcm in
diffusers' flavor, while A1111's \"LCM\" (the k-diffusion flavor) walks LCM's 50-step grid on any
schedule. A1111's \"DDIM\", \"DDIM CFG++\", \"PLMS\" and \"UniPC\" are its own samplers (not
k-diffusion's): they walk A1111's integer timesteps 1, 1 + 1000/steps, ... (7 steps plan 8), take
no schedule, and the DDIMs and PLMS stop one timestep short of 0 as A1111 does; UniPC is bh1 of
order 3 in continuous time. ddim_cfgpp (A1111's only) divides the CFG scale by 12.5 and runs the
negative prompt even at CFG <= 1; its --eta is DDIM's. lcm and tcd are for LCM/TCD-distilled models or
LoRAs (few steps, low CFG); tcd's --eta is its gamma (0.3).
--rescale-zero-snr rescales the schedule to zero terminal SNR with trailing timesteps
(ddim, ddpm, lcm, tcd, euler, euler_a, dpmpp_2m, dpmpp_2m_sde, unipc; v-prediction models).";

/// Runs `sd samplers`.
pub fn run() -> Result<()> {
    outln!("Samplers (--sampler NAME or the A1111 name):");
    outln!(
        "  {:<18} {:<18} {:<32} {:<26} description",
        "name",
        "A1111",
        "diffusers",
        "k-diffusion / A1111"
    );
    for kind in SamplerKind::ALL {
        outln!(
            "  {:<18} {:<18} {:<32} {:<26} {}",
            kind.name(),
            kind.a1111_name(),
            kind.diffusers_class().unwrap_or("-"),
            kind.kdiffusion_function().unwrap_or("-"),
            kind.description()
        );
    }
    outln!();
    outln!("Sigma schedules (--schedule NAME or the A1111 label; --sigmas LIST for your own):");
    for schedule in SigmaSchedule::ALL {
        outln!(
            "  {:<18} {:<18} {}",
            schedule.name(),
            schedule.a1111_name(),
            schedule.description()
        );
    }
    outln!();
    outln!("{FLAVOR_NOTE}");
    Ok(())
}

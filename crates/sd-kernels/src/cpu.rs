//! Which kernel level runs: detected once from the CPU's features, forced with
//! `SD_CPU_KERNELS`, and overridable per thread (tests run every level on one machine).

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a kernel level (`generic`, `avx2`, ...).
pub const ENV_VAR: &str = "SD_CPU_KERNELS";

/// A kernel level: the instruction set the micro-kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust that the compiler vectorizes as it can: every architecture.
    Generic,
    /// 256-bit AVX2 with FMA (x86-64 since Haswell / Zen 1).
    Avx2,
    /// 512-bit AVX-512F (Skylake-SP and later Xeons, Zen 4), with AVX2 and FMA for the
    /// kernels that have no wider version.
    Avx512,
    /// AVX-512 plus AMX-BF16 tiles (Sapphire Rapids and later Xeons): products whose packed
    /// operand is bf16 run on the tiles with bf16 activations; everything else as `Avx512`.
    Amx,
}

impl Level {
    /// Every level, slowest first.
    pub const ALL: &'static [Level] = &[Level::Generic, Level::Avx2, Level::Avx512, Level::Amx];

    /// The name `SD_CPU_KERNELS` takes and `sd` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Generic => "generic",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Amx => "amx",
        }
    }

    /// The CPU features this level needs, as `/proc/cpuinfo` spells them.
    pub fn needs(self) -> &'static str {
        match self {
            Level::Generic => "nothing",
            Level::Avx2 => "avx2 fma",
            Level::Avx512 => "avx512f avx2 fma",
            Level::Amx => "amx_bf16 amx_tile avx512_bf16 avx512f avx2 fma (and Linux's permission)",
        }
    }

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Level::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.is_available() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Amx => {
                Level::Avx512.is_available()
                    && std::arch::is_x86_feature_detected!("avx512bf16")
                    && crate::gemm::amx::usable()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The levels this CPU can run, slowest first.
    pub fn available() -> Vec<Level> {
        Level::ALL
            .iter()
            .copied()
            .filter(|l| l.is_available())
            .collect()
    }

    /// The fastest level this CPU can run.
    pub fn best() -> Level {
        *Level::available().last().unwrap_or(&Level::Generic)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A level name that is unknown or that this CPU cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelError(pub String);

impl fmt::Display for LevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LevelError {}

impl FromStr for Level {
    type Err = LevelError;

    fn from_str(name: &str) -> Result<Self, LevelError> {
        let wanted = name.trim().to_ascii_lowercase();
        let level = Level::ALL
            .iter()
            .copied()
            .find(|l| l.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
                LevelError(format!(
                    "unknown CPU kernel level {name:?}; valid: {}",
                    names.join(", ")
                ))
            })?;
        if !level.is_available() {
            return Err(LevelError(format!(
                "CPU kernel level {} needs {}, which this CPU lacks (available: {})",
                level.name(),
                level.needs(),
                Level::available()
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(level)
    }
}

static PROCESS_LEVEL: OnceLock<Result<Level, LevelError>> = OnceLock::new();

thread_local! {
    static THREAD_LEVEL: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The process's level: `SD_CPU_KERNELS` when set (an error when it names a level this CPU
/// cannot run), the fastest available otherwise. Decided once.
pub fn process_level() -> Result<Level, LevelError> {
    PROCESS_LEVEL
        .get_or_init(|| match std::env::var(ENV_VAR) {
            Ok(name) if !name.trim().is_empty() => name
                .parse()
                .map_err(|e: LevelError| LevelError(format!("{ENV_VAR}: {e}"))),
            _ => Ok(Level::best()),
        })
        .clone()
}

/// The level kernels called from this thread use: the thread's override, else the process's
/// level (the fastest available when `SD_CPU_KERNELS` is invalid; [`process_level`] reports
/// that error).
pub fn level() -> Level {
    THREAD_LEVEL
        .with(|l| l.get())
        .unwrap_or_else(|| process_level().unwrap_or_else(|_| Level::best()))
}

/// Runs `f` with kernels at `level` on this thread (the level must be available).
pub fn with_level<T>(level: Level, f: impl FnOnce() -> T) -> T {
    assert!(
        level.is_available(),
        "kernel level {level} is not available"
    );
    let previous = THREAD_LEVEL.with(|l| l.replace(Some(level)));
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_LEVEL.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid() {
        for level in Level::available() {
            assert_eq!(level.name().parse::<Level>().unwrap(), level);
        }
        let err = "sse9".parse::<Level>().unwrap_err().to_string();
        assert!(err.contains("generic") && err.contains("avx2"), "{err}");
    }

    #[test]
    fn thread_override_is_scoped() {
        let outside = level();
        with_level(Level::Generic, || assert_eq!(level(), Level::Generic));
        assert_eq!(level(), outside);
    }
}

use super::*;
use crate::cpu::{with_level, Level};
use crate::testutil::{with_threads, Rng};

/// `erfc(a)` for `a ≥ 0` in f64: the Maclaurin series of erf below 2.5, the continued fraction
/// `erfc(a) = e^(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …))))` above.
fn erfc64(a: f64) -> f64 {
    assert!(a >= 0.0);
    if a < 2.5 {
        // erf(a) = 2/√π · Σ (-1)ⁿ a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum) = (a, a);
        for n in 1..200 {
            term *= -a * a / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-18 * sum.abs() {
                break;
            }
        }
        1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut f = a;
        for k in (1..=600).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    }
}

fn sigmoid64(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The f64 reference of an activation, and the magnitude of its sigmoid argument (the f32
/// rounding of that argument costs that many ulp of relative error; 0 where there is none).
fn reference(act: Activation, x: f32) -> (f64, f64) {
    let x = x as f64;
    if x.is_nan() {
        return (f64::NAN, 0.0);
    }
    if x == f64::NEG_INFINITY {
        return (-0.0, 0.0);
    }
    if x == f64::INFINITY {
        return (f64::INFINITY, 0.0);
    }
    match act {
        Activation::Silu => (x * sigmoid64(x), 0.0),
        Activation::QuickGelu => {
            let z = 1.702 * x;
            (x * sigmoid64(z), z.abs())
        }
        Activation::GeluTanh => {
            let z = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            (x * sigmoid64(z), z.abs())
        }
        Activation::GeluErf => {
            let a = x.abs() / std::f64::consts::SQRT_2;
            let v = if x >= 0.0 {
                x * (1.0 - 0.5 * erfc64(a))
            } else {
                0.5 * x * erfc64(a)
            };
            (v, 0.0)
        }
    }
}

/// How many f32 ulp of `want` `got` is from it; infinities count as 2¹²⁸ (one ulp past
/// `f32::MAX`), NaN only matches NaN.
fn ulps(got: f32, want: f64) -> f64 {
    if want.is_nan() || got.is_nan() {
        return if want.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let top = 2f64.powi(128);
    let g = if got.is_infinite() {
        top.copysign(got as f64)
    } else {
        got as f64
    };
    let w = want.clamp(-top, top);
    if g == w {
        return 0.0;
    }
    (g - w).abs() / ulp_of(w)
}

/// The f32 ulp at `w` (that of `f32::MAX` past it).
fn ulp_of(w: f64) -> f64 {
    let w32 = (w as f32).abs().min(f32::MAX);
    if w32 < f32::MIN_POSITIVE {
        2f64.powi(-149)
    } else {
        2f64.powi(((w32.to_bits() >> 23) as i32) - 127 - 23)
    }
}

/// The values every function is tried on: the edges of f32, the exp range in a fine sweep,
/// and random bit patterns (finite, infinite and NaN alike).
fn inputs() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(1),
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-10,
        -1e-10,
        0.5,
        -0.5,
        1.0,
        -1.0,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
    ];
    for m in [
        2.0, 10.0, 14.0, 15.0, 16.0, 87.3, 88.0, 88.72, 88.7228, 88.7229, 88.73, 89.0, 100.0,
        103.28, 103.9, 103.97, 103.98, 104.0, 1e10, 1e30,
    ] {
        v.push(m);
        v.push(-m);
    }
    // A sweep of [-110, 100] and of [-16, 16] (the activations' interesting range).
    v.extend((0..200_001).map(|i| -110.0 + 210.0 * i as f32 / 200_000.0));
    v.extend((0..100_001).map(|i| -16.0 + 32.0 * i as f32 / 100_000.0));
    let mut rng = Rng::new(7);
    v.extend((0..50_000).map(|_| {
        let hi = ((rng.next() + 1.0) * 65536.0) as u32;
        let lo = ((rng.next() + 1.0) * 32768.0) as u32;
        f32::from_bits((hi << 16) ^ lo)
    }));
    // An odd length so the vector loops have a tail.
    if v.len().is_multiple_of(8) {
        v.push(0.25);
    }
    v
}

#[test]
fn erfc64_matches_known_values() {
    // erfc at these points (computed separately with arbitrary precision).
    for (a, want) in [
        (0.0, 1.0),
        (0.1, 0.887537083981715),
        (0.5, 0.4795001221869535),
        (1.0, 0.15729920705028513),
        (2.4, 0.0006885138966450786),
        (2.5, 0.0004069520174449589),
        (2.6, 0.0002360344165293492),
        (3.0, 2.209049699858544e-05),
        (5.0, 1.537459794428035e-12),
        (9.0, 4.13703174651381e-37),
        (10.0, 2.088487583762545e-45),
    ] {
        let got = erfc64(a);
        assert!(
            (got - want).abs() <= 1e-13 * want,
            "erfc({a}) = {got:e}, want {want:e}"
        );
    }
}

#[test]
fn exp_within_two_ulp_everywhere_at_every_level() {
    let xs = inputs();
    for level in Level::available() {
        let mut got = xs.clone();
        with_level(level, || exp(&mut got));
        let limit = match level {
            Level::Generic => 1.0,
            _ => 2.0,
        };
        let mut worst = (0.0, 0.0f32);
        for (&x, &g) in xs.iter().zip(&got) {
            let e = ulps(g, (x as f64).exp());
            assert!(
                e <= limit,
                "{level}: exp({x:e}) = {g:e}, want {:e} ({e} ulp)",
                (x as f64).exp()
            );
            if e > worst.0 {
                worst = (e, x);
            }
        }
        eprintln!("{level}: exp worst {} ulp at {:e}", worst.0, worst.1);
    }
}

#[test]
fn exp_special_values() {
    for level in Level::available() {
        let mut v = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -200.0,
            200.0,
            0.0,
            -0.0,
            -103.0,
            88.8,
        ];
        with_level(level, || exp(&mut v));
        assert_eq!(v[0], 0.0, "{level}");
        assert_eq!(v[1], f32::INFINITY, "{level}");
        assert!(v[2].is_nan(), "{level}");
        assert_eq!(v[3], 0.0, "{level}");
        assert_eq!(v[4], f32::INFINITY, "{level}");
        assert_eq!(v[5], 1.0, "{level}");
        assert_eq!(v[6], 1.0, "{level}");
        assert!(v[7] > 0.0 && v[7] < f32::MIN_POSITIVE, "{level}: {}", v[7]);
        assert_eq!(v[8], f32::INFINITY, "{level}");
    }
}

#[test]
fn activations_match_f64_at_every_level() {
    let xs = inputs();
    for level in Level::available() {
        for &act in Activation::ALL {
            let mut got = xs.clone();
            with_level(level, || act.apply(&mut got));
            // Relative error in ulp (times 1 + |sigmoid argument| where rounding that
            // argument is inherent), or an absolute 1e-40 near the subnormals.
            let limit = match (level, act) {
                (Level::Generic, _) => 4.0,
                (_, Activation::GeluErf) => 6.0,
                _ => 4.0,
            };
            let mut worst = (0.0, 0.0f32);
            for (&x, &g) in xs.iter().zip(&got) {
                let (want, cond) = reference(act, x);
                let e = ulps(g, want) / (1.0 + cond);
                let ok = e <= limit || (g as f64 - want).abs() <= 1e-40;
                assert!(
                    ok,
                    "{level} {act:?}({x:e}) = {g:e}, want {want:e} ({e} ulp / (1 + {cond}))"
                );
                if e > worst.0 && (g as f64 - want).abs() > 1e-40 {
                    worst = (e, x);
                }
            }
            eprintln!("{level} {act:?}: worst {} ulp at {:e}", worst.0, worst.1);
        }
    }
}

#[test]
fn gelu_erf_is_within_rounding_of_an_erf_1e7_off() {
    // gelu = 0.5·x·(1 + erf): an erf off by 1e-7 moves it by 0.5·|x|·1e-7; the output's own
    // rounding adds half an ulp.
    let xs: Vec<f32> = (1..=80_000)
        .map(|i| -10.0 + 20.0 * i as f32 / 80_000.0)
        .collect();
    for level in Level::available() {
        let mut got = xs.clone();
        with_level(level, || gelu_erf(&mut got));
        let mut worst = (0.0, 0.0);
        for (&x, &g) in xs.iter().zip(&got) {
            if x == 0.0 {
                continue;
            }
            let (want, _) = reference(Activation::GeluErf, x);
            let rounding = 0.5 * ulp_of(want);
            let erf_error = ((g as f64 - want).abs() - rounding).max(0.0) / (0.5 * x.abs() as f64);
            assert!(
                erf_error <= 1e-7,
                "{level}: gelu_erf({x}) = {g}, want {want}: erf off by {erf_error:e}"
            );
            if erf_error > worst.0 {
                worst = (erf_error, x);
            }
        }
        eprintln!(
            "{level}: gelu_erf's erf off by at most {:e} (at {})",
            worst.0, worst.1
        );
    }
}

#[test]
fn specials_of_the_activations() {
    for level in Level::available() {
        for &act in Activation::ALL {
            let mut v = [
                f32::NEG_INFINITY,
                f32::INFINITY,
                f32::NAN,
                0.0,
                -0.0,
                -f32::MAX,
            ];
            with_level(level, || act.apply(&mut v));
            assert!(
                v[0] == 0.0 && v[0].is_sign_negative(),
                "{level} {act:?}: {}",
                v[0]
            );
            assert_eq!(v[1], f32::INFINITY, "{level} {act:?}");
            assert!(v[2].is_nan(), "{level} {act:?}");
            assert!(v[3] == 0.0 && v[4] == 0.0, "{level} {act:?}");
            assert!(v[5] == 0.0, "{level} {act:?}: {}", v[5]);
        }
    }
}

#[test]
fn every_length_and_the_pool_split_agree_with_one_call() {
    let mut rng = Rng::new(3);
    let long: Vec<f32> = (0..PAR_MIN + 13).map(|_| rng.next() * 20.0).collect();
    for level in Level::available() {
        for len in (0..40).chain([PAR_MIN + 13]) {
            let xs = &long[..len];
            let mut whole = xs.to_vec();
            with_level(level, || exp_serial(level, &mut whole));
            let mut one = xs.to_vec();
            for x in &mut one {
                let mut single = [*x];
                exp_serial(level, &mut single);
                *x = single[0];
            }
            assert_eq!(whole, one, "{level} exp, length {len}");
            let threads = with_threads(3, || {
                let mut v = xs.to_vec();
                exp_at(level, &mut v);
                v
            });
            assert_eq!(whole, threads, "{level} exp over 3 threads, length {len}");
            for &act in Activation::ALL {
                let mut whole = xs.to_vec();
                act.apply_serial(level, &mut whole);
                let threads = with_threads(2, || {
                    let mut v = xs.to_vec();
                    act.apply_at(level, &mut v);
                    v
                });
                assert_eq!(whole, threads, "{level} {act:?}, length {len}");
            }
        }
    }
}

/// Every f32 that exp does not saturate on, through every level (minutes: run with
/// `--ignored` after changing the kernel).
#[test]
#[ignore]
fn exp_exhaustive() {
    for level in Level::available() {
        let mut worst = (0.0, 0.0f32);
        let mut buf = Vec::with_capacity(1 << 20);
        let ranges = [
            (0u32, 89f32.to_bits()),
            (0x8000_0000u32, 0x8000_0000 | 104f32.to_bits()),
        ];
        for (start, end) in ranges {
            let mut bits = start;
            while bits < end {
                let stop = end.min(bits.saturating_add(1 << 20));
                buf.clear();
                buf.extend((bits..stop).map(f32::from_bits));
                let mut got = buf.clone();
                exp_serial(level, &mut got);
                for (&x, &g) in buf.iter().zip(&got) {
                    let e = ulps(g, (x as f64).exp());
                    if e > worst.0 {
                        worst = (e, x);
                    }
                }
                bits = stop;
            }
        }
        eprintln!("{level}: exp worst {} ulp at {:e}", worst.0, worst.1);
        assert!(worst.0 <= 2.0);
    }
}

/// Every 61st f32 in [-16, 16] through every activation (a minute: run with `--ignored`).
#[test]
#[ignore]
fn activations_exhaustive() {
    for level in Level::available() {
        for &act in Activation::ALL {
            let mut worst = (0.0, 0.0f32);
            let mut buf = Vec::with_capacity(1 << 20);
            for (start, end) in [
                (0u32, 16f32.to_bits()),
                (0x8000_0000u32, 0x8000_0000 | 16f32.to_bits()),
            ] {
                let mut bits = start;
                while bits < end {
                    let stop = end.min(bits.saturating_add(1 << 20));
                    buf.clear();
                    buf.extend((bits..stop).step_by(61).map(f32::from_bits));
                    let mut got = buf.clone();
                    act.apply_serial(level, &mut got);
                    for (&x, &g) in buf.iter().zip(&got) {
                        let (want, cond) = reference(act, x);
                        if (g as f64 - want).abs() <= 1e-40 {
                            continue;
                        }
                        let e = ulps(g, want) / (1.0 + cond);
                        if e > worst.0 {
                            worst = (e, x);
                        }
                    }
                    bits = stop;
                }
            }
            eprintln!("{level} {act:?}: worst {} ulp at {:e}", worst.0, worst.1);
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx512_exp_silu_and_gelu_erf_equal_avx2_to_the_bit() {
    use std::arch::x86_64::*;
    if !Level::Avx512.is_available() {
        eprintln!("skipped: this CPU has no AVX-512F");
        return;
    }
    let xs = inputs();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for chunk in xs.chunks_exact(16) {
        let (mut wide, mut narrow) = ([[0f32; 16]; 3], [[0f32; 16]; 3]);
        // SAFETY: AVX-512F (checked above) implies AVX2 and FMA here (the level's check);
        // every load and store is of 16 or 8 values in bounds.
        unsafe {
            let v = _mm512_loadu_ps(chunk.as_ptr());
            _mm512_storeu_ps(wide[0].as_mut_ptr(), super::avx512::exp(v));
            _mm512_storeu_ps(wide[1].as_mut_ptr(), super::avx512::gelu_erf(v));
            _mm512_storeu_ps(wide[2].as_mut_ptr(), super::avx512::silu(v));
            for half in 0..2 {
                let v = _mm256_loadu_ps(chunk.as_ptr().add(8 * half));
                let at = 8 * half;
                _mm256_storeu_ps(narrow[0][at..].as_mut_ptr(), super::avx2::exp(v));
                _mm256_storeu_ps(narrow[1][at..].as_mut_ptr(), super::avx2::gelu_erf(v));
                _mm256_storeu_ps(narrow[2][at..].as_mut_ptr(), super::avx2::silu(v));
            }
        }
        assert_eq!(bits(&wide[0]), bits(&narrow[0]), "exp of {chunk:?}");
        assert_eq!(bits(&wide[1]), bits(&narrow[1]), "gelu_erf of {chunk:?}");
        assert_eq!(bits(&wide[2]), bits(&narrow[2]), "silu of {chunk:?}");
    }
}

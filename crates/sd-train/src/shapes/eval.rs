//! Reading a scene back from pixels, and scoring a model on captions.

use std::fmt;

use image::RgbImage;

use super::scene::{Colour, Position, Scene, Shape, Size, SplitMix64, IMAGE_SIZE};
use stable_diffusion::pipeline::{Control, GenerationRequest, StableDiffusion};
use stable_diffusion::scheduler::SamplerKind;
use stable_diffusion::{Error, Result};

/// Width of the border ring whose pixels decide the background colour.
const BORDER: u32 = 2;
/// Squared RGB distance from the background above which a pixel belongs to the shape.
const SHAPE_DISTANCE_SQ: i32 = 55 * 55;
/// Mask areas (in pixels at 64x64) above this count as large.
const LARGE_AREA: f64 = 200.0;

/// The attributes read from an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// The dominant palette colour of the border.
    pub background: Colour,
    /// The dominant palette colour of the pixels that differ from the background, if any do.
    pub colour: Option<Colour>,
    /// The grid cell of the shape mask's centroid, if there is a shape.
    pub position: Option<Position>,
    /// Small or large, from the mask's area.
    pub size: Option<Size>,
    /// The shape, from how much of its bounding box the mask fills.
    pub shape: Option<Shape>,
}

/// Majority vote over colours.
fn dominant(colours: impl Iterator<Item = Colour>) -> Option<Colour> {
    let mut counts = [0usize; 8];
    for c in colours {
        counts[c.index()] += 1;
    }
    let (index, &count) = counts.iter().enumerate().max_by_key(|(_, &n)| n)?;
    (count > 0).then_some(Colour::ALL[index])
}

fn distance_sq(a: [u8; 3], b: [u8; 3]) -> i32 {
    (0..3).map(|i| (a[i] as i32 - b[i] as i32).pow(2)).sum()
}

/// Reads background colour, shape colour, position, size and shape from `image`'s pixels
/// (any size; positions and sizes are judged relative to 64x64).
pub fn measure(image: &RgbImage) -> Measured {
    let (w, h) = image.dimensions();
    let on_border = |x: u32, y: u32| x < BORDER || y < BORDER || x >= w - BORDER || y >= h - BORDER;
    let background = dominant(
        image
            .enumerate_pixels()
            .filter(|(x, y, _)| on_border(*x, *y))
            .map(|(_, _, p)| Colour::nearest(p.0)),
    )
    .unwrap_or(Colour::Black);
    // The shape mask: pixels far from the background's palette colour and from the border's
    // mean colour.
    let border: Vec<[u8; 3]> = image
        .enumerate_pixels()
        .filter(|(x, y, _)| on_border(*x, *y))
        .map(|(_, _, p)| p.0)
        .collect();
    let mean = {
        let mut sum = [0f64; 3];
        for p in &border {
            for c in 0..3 {
                sum[c] += p[c] as f64;
            }
        }
        let n = border.len().max(1) as f64;
        [
            (sum[0] / n).round() as u8,
            (sum[1] / n).round() as u8,
            (sum[2] / n).round() as u8,
        ]
    };
    let bg_rgb = background.rgb();
    let mask: Vec<(u32, u32, Colour)> = image
        .enumerate_pixels()
        .filter(|(_, _, p)| {
            distance_sq(p.0, bg_rgb) > SHAPE_DISTANCE_SQ
                && distance_sq(p.0, mean) > SHAPE_DISTANCE_SQ
        })
        .map(|(x, y, p)| (x, y, Colour::nearest(p.0)))
        .collect();
    let colour = dominant(mask.iter().map(|m| m.2).filter(|&c| c != background));
    if mask.is_empty() {
        return Measured {
            background,
            colour,
            position: None,
            size: None,
            shape: None,
        };
    }
    let n = mask.len() as f64;
    let cx = mask.iter().map(|m| m.0 as f64 + 0.5).sum::<f64>() / n;
    let cy = mask.iter().map(|m| m.1 as f64 + 0.5).sum::<f64>() / n;
    let cell = |v: f64, extent: u32| ((3.0 * v / extent as f64).floor() as usize).min(2);
    let position = Position::from_cell(cell(cy, h), cell(cx, w));
    let area_64 = n * (IMAGE_SIZE * IMAGE_SIZE) as f64 / (w * h) as f64;
    let size = if area_64 > LARGE_AREA {
        Size::Large
    } else {
        Size::Small
    };
    let (x0, x1) = mask
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), m| (lo.min(m.0), hi.max(m.0)));
    let (y0, y1) = mask
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), m| (lo.min(m.1), hi.max(m.1)));
    let fill = n / (((x1 - x0 + 1) * (y1 - y0 + 1)) as f64);
    let shape = if fill > 0.89 {
        Shape::Square
    } else if fill > 0.64 {
        Shape::Circle
    } else {
        Shape::Triangle
    };
    Measured {
        background,
        colour,
        position: Some(position),
        size: Some(size),
        shape: Some(shape),
    }
}

/// The attributes the evaluation scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// The shape's colour.
    Colour,
    /// The background colour.
    Background,
    /// The position (3x3 grid).
    Position,
    /// Small or large.
    Size,
    /// Circle, square or triangle.
    Shape,
}

impl Attribute {
    /// Every attribute, in report order.
    pub const ALL: [Attribute; 5] = [
        Attribute::Colour,
        Attribute::Background,
        Attribute::Position,
        Attribute::Size,
        Attribute::Shape,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Colour => "shape colour",
            Attribute::Background => "background colour",
            Attribute::Position => "position",
            Attribute::Size => "size",
            Attribute::Shape => "shape",
        }
    }

    /// Whether `measured` agrees with `scene` on this attribute.
    pub fn matches(self, scene: &Scene, measured: &Measured) -> bool {
        match self {
            Attribute::Colour => measured.colour == Some(scene.colour),
            Attribute::Background => measured.background == scene.background,
            Attribute::Position => measured.position == Some(scene.position),
            Attribute::Size => measured.size == Some(scene.size),
            Attribute::Shape => measured.shape == Some(scene.shape),
        }
    }
}

/// Correct answers out of a total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Images where the attribute was right.
    pub correct: usize,
    /// Images scored.
    pub total: usize,
}

impl Tally {
    /// The fraction correct (0 when nothing was scored).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Per-attribute accuracy over all captions and over the held-out ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalReport {
    /// One tally per [`Attribute::ALL`] entry, over every caption.
    pub all: [Tally; 5],
    /// The same over the held-out combinations only.
    pub held_out: [Tally; 5],
    /// Every scored caption with what was measured.
    pub results: Vec<(Scene, Measured)>,
}

impl EvalReport {
    /// Adds one image's result.
    pub fn add(&mut self, scene: Scene, measured: Measured) {
        for (i, attribute) in Attribute::ALL.iter().enumerate() {
            let ok = attribute.matches(&scene, &measured) as usize;
            self.all[i].correct += ok;
            self.all[i].total += 1;
            if scene.held_out() {
                self.held_out[i].correct += ok;
                self.held_out[i].total += 1;
            }
        }
        self.results.push((scene, measured));
    }

    /// The tally of `attribute` over every caption.
    pub fn tally(&self, attribute: Attribute) -> Tally {
        self.all[Attribute::ALL
            .iter()
            .position(|&a| a == attribute)
            .unwrap_or(0)]
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let section = |tallies: &[Tally; 5]| {
            serde_json::Value::Object(
                Attribute::ALL
                    .iter()
                    .zip(tallies)
                    .map(|(a, t)| {
                        (
                            a.name().to_string(),
                            serde_json::json!({
                                "correct": t.correct,
                                "total": t.total,
                                "accuracy": t.accuracy(),
                            }),
                        )
                    })
                    .collect(),
            )
        };
        serde_json::json!({ "all": section(&self.all), "held_out": section(&self.held_out) })
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<18} {:>16} {:>16}", "attribute", "all", "held-out")?;
        for (i, attribute) in Attribute::ALL.iter().enumerate() {
            let cell =
                |t: &Tally| format!("{:5.1}% ({}/{})", 100.0 * t.accuracy(), t.correct, t.total);
            writeln!(
                f,
                "{:<18} {:>16} {:>16}",
                attribute.name(),
                cell(&self.all[i]),
                cell(&self.held_out[i])
            )?;
        }
        Ok(())
    }
}

/// The evaluation's scenes: every held-out colour × shape × position combination first (24,
/// with random background and size), then random training combinations, `count` in all;
/// deterministic for a `seed`. No jitter: captions are judged by their nominal layout.
pub fn evaluation_scenes(count: usize, seed: u64) -> Vec<Scene> {
    let mut rng = SplitMix64::new(seed);
    let mut scenes = Vec::with_capacity(count);
    'outer: for colour in Colour::ALL {
        for shape in Shape::ALL {
            for position in Position::ALL {
                if scenes.len() == count {
                    break 'outer;
                }
                if Scene::is_held_out(colour, shape, position) {
                    let background = loop {
                        let c = *rng.pick(&Colour::ALL);
                        if c != colour {
                            break c;
                        }
                    };
                    let size = *rng.pick(&Size::ALL);
                    scenes.push(Scene::new(colour, background, shape, size, position));
                }
            }
        }
    }
    while scenes.len() < count {
        let mut scene = Scene::random(&mut rng);
        if scene.held_out() {
            continue;
        }
        scene.jitter = (0.0, 0.0);
        scene.scale = 1.0;
        scenes.push(scene);
    }
    scenes
}

/// How [`evaluate`] generates its images.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Sampling steps per image.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Seed of the first image; image `i` uses `seed + i`.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            steps: 20,
            cfg_scale: 7.5,
            sampler: SamplerKind::EulerA,
            seed: 0,
        }
    }
}

/// Generates one 64x64 image per scene's canonical caption with the normal pipeline and
/// scores what the pixels show. `on_image` sees each scene, its image and the measurement.
pub fn evaluate(
    model: &StableDiffusion,
    scenes: &[Scene],
    options: &EvalOptions,
    on_image: &mut dyn FnMut(usize, &Scene, &RgbImage, &Measured) -> Control,
) -> Result<EvalReport> {
    let mut report = EvalReport::default();
    for (i, scene) in scenes.iter().enumerate() {
        let request = GenerationRequest {
            prompt: scene.caption(),
            width: Some(IMAGE_SIZE),
            height: Some(IMAGE_SIZE),
            steps: options.steps,
            cfg_scale: options.cfg_scale,
            sampler: options.sampler,
            seed: Some(options.seed + i as u64),
            ..GenerationRequest::default()
        };
        let generation =
            model.generate(&request, &Default::default(), &mut |_| Control::Continue)?;
        let image = generation
            .images
            .into_iter()
            .next()
            .ok_or_else(|| Error::invalid("evaluation", "the pipeline returned no image"))?;
        let measured = measure(&image);
        report.add(*scene, measured);
        if on_image(i, scene, &image, &measured) == Control::Cancel {
            return Err(Error::Cancelled);
        }
    }
    Ok(report)
}

//! Scenes: what a picture shows, how it is drawn and how it is described.

use candle_core::{Device, Tensor};

use stable_diffusion::Result;

/// Width and height of every picture, in pixels.
pub const IMAGE_SIZE: usize = 64;

/// A small, fast, seedable generator (SplitMix64) for the data set's choices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One item of `items` (non-empty), uniformly.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The colours of shapes and backgrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Orange.
    Orange,
    /// Purple.
    Purple,
    /// White.
    White,
    /// Black.
    Black,
}

impl Colour {
    /// Every colour, in index order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Orange,
        Colour::Purple,
        Colour::White,
        Colour::Black,
    ];

    /// The English word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The RGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 170, 50],
            Colour::Blue => [30, 70, 220],
            Colour::Yellow => [245, 225, 40],
            Colour::Orange => [250, 140, 20],
            Colour::Purple => [140, 40, 180],
            Colour::White => [245, 245, 245],
            Colour::Black => [15, 15, 15],
        }
    }

    /// The position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        Colour::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// The palette colour nearest to `rgb` (Euclidean distance in RGB).
    pub fn nearest(rgb: [u8; 3]) -> Colour {
        let distance = |c: Colour| {
            let p = c.rgb();
            (0..3)
                .map(|i| (p[i] as i32 - rgb[i] as i32).pow(2))
                .sum::<i32>()
        };
        Colour::ALL
            .into_iter()
            .min_by_key(|&c| distance(c))
            .unwrap_or(Colour::Black)
    }
}

/// The shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upright isosceles triangle.
    Triangle,
}

impl Shape {
    /// Every shape, in index order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The English word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The position in [`Shape::ALL`].
    pub fn index(self) -> usize {
        Shape::ALL.iter().position(|&s| s == self).unwrap_or(0)
    }

    /// Whether the point `(dx, dy)` relative to the centre lies inside the shape of half
    /// extent `r`.
    fn contains(self, dx: f64, dy: f64, r: f64) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= 0.9 * r && dy.abs() <= 0.9 * r,
            Shape::Triangle => {
                // Apex at (0, -r), base from (-r, r/2) to (r, r/2): the centroid is the centre.
                (-r..=r / 2.0).contains(&dy) && dx.abs() <= (dy + r) / 1.5
            }
        }
    }
}

/// The two sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// About 14 pixels across.
    Small,
    /// About 28 pixels across.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The English word.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The position in [`Size::ALL`].
    pub fn index(self) -> usize {
        match self {
            Size::Small => 0,
            Size::Large => 1,
        }
    }

    /// Half the shape's extent in pixels, before jitter.
    fn half_extent(self) -> f64 {
        match self {
            Size::Small => 7.0,
            Size::Large => 14.0,
        }
    }

    /// Distance of an off-centre position from the image centre, in pixels.
    fn offset(self) -> f64 {
        match self {
            Size::Small => 20.0,
            Size::Large => 15.0,
        }
    }
}

/// The nine positions: the cells of a 3x3 grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Top left corner.
    TopLeft,
    /// Top edge, centred.
    Top,
    /// Top right corner.
    TopRight,
    /// Left edge, centred.
    Left,
    /// The middle.
    Center,
    /// Right edge, centred.
    Right,
    /// Bottom left corner.
    BottomLeft,
    /// Bottom edge, centred.
    Bottom,
    /// Bottom right corner.
    BottomRight,
}

impl Position {
    /// Every position, row by row from the top left.
    pub const ALL: [Position; 9] = [
        Position::TopLeft,
        Position::Top,
        Position::TopRight,
        Position::Left,
        Position::Center,
        Position::Right,
        Position::BottomLeft,
        Position::Bottom,
        Position::BottomRight,
    ];

    /// The position in [`Position::ALL`] (`3 · row + column`).
    pub fn index(self) -> usize {
        Position::ALL.iter().position(|&p| p == self).unwrap_or(4)
    }

    /// The cell `(row, column)`, each in `0..3`.
    pub fn cell(self) -> (usize, usize) {
        (self.index() / 3, self.index() % 3)
    }

    /// The position of grid cell `(row, column)`.
    pub fn from_cell(row: usize, column: usize) -> Position {
        Position::ALL[3 * row.min(2) + column.min(2)]
    }

    /// A short name (`top left`, `center`, `left`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::Top => "top",
            Position::TopRight => "top right",
            Position::Left => "left",
            Position::Center => "center",
            Position::Right => "right",
            Position::BottomLeft => "bottom left",
            Position::Bottom => "bottom",
            Position::BottomRight => "bottom right",
        }
    }

    /// The canonical phrase: "in the center", "in the top left corner", "on the left",
    /// "at the top".
    pub fn phrase(self) -> String {
        self.phrases()[0].clone()
    }

    /// Every phrase the captions use for this position, the canonical one first.
    pub fn phrases(self) -> Vec<String> {
        let name = self.name();
        match self {
            Position::Center => vec![
                "in the center".into(),
                "in the middle".into(),
                "at the center".into(),
            ],
            Position::TopLeft
            | Position::TopRight
            | Position::BottomLeft
            | Position::BottomRight => vec![
                format!("in the {name} corner"),
                format!("at the {name} corner"),
                format!("at the {name}"),
                format!("{name}"),
            ],
            Position::Left | Position::Right => vec![
                format!("on the {name}"),
                format!("at the {name}"),
                format!("on the {name} side"),
            ],
            Position::Top | Position::Bottom => vec![
                format!("at the {name}"),
                format!("on the {name}"),
                format!("at the {name} edge"),
            ],
        }
    }
}

/// The number of classes of each of [`Scene::caption_labels`]' attributes (each attribute's
/// values plus "not named").
pub const CAPTION_CLASSES: [usize; 5] = [9, 9, 4, 3, 10];

/// What one picture shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    /// The shape's colour.
    pub colour: Colour,
    /// The background colour (never the shape's).
    pub background: Colour,
    /// The shape.
    pub shape: Shape,
    /// Its size.
    pub size: Size,
    /// Its position.
    pub position: Position,
    /// Pixel offset of the centre from the position's nominal centre, `(dx, dy)`.
    pub jitter: (f64, f64),
    /// Factor on the nominal size.
    pub scale: f64,
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl Scene {
    /// Whether the shape colour × shape × position combination is kept out of training:
    /// `(colour index + 3 · shape index + position index) mod 9 == 0`, with the indices of
    /// [`Colour::ALL`], [`Shape::ALL`] and [`Position::ALL`]. Every colour-and-shape pair
    /// has exactly one held-out position (24 of the 216 combinations).
    pub fn is_held_out(colour: Colour, shape: Shape, position: Position) -> bool {
        (colour.index() + 3 * shape.index() + position.index()).is_multiple_of(9)
    }

    /// Whether this scene's combination is held out of training.
    pub fn held_out(&self) -> bool {
        Self::is_held_out(self.colour, self.shape, self.position)
    }

    /// A scene with no jitter and the nominal size.
    pub fn new(
        colour: Colour,
        background: Colour,
        shape: Shape,
        size: Size,
        position: Position,
    ) -> Self {
        Self {
            colour,
            background,
            shape,
            size,
            position,
            jitter: (0.0, 0.0),
            scale: 1.0,
        }
    }

    /// A random scene (any combination, held-out ones included) with jitter.
    pub fn random(rng: &mut SplitMix64) -> Self {
        let colour = *rng.pick(&Colour::ALL);
        let background = loop {
            let c = *rng.pick(&Colour::ALL);
            if c != colour {
                break c;
            }
        };
        let mut scene = Self::new(
            colour,
            background,
            *rng.pick(&Shape::ALL),
            *rng.pick(&Size::ALL),
            *rng.pick(&Position::ALL),
        );
        scene.jitter = (4.0 * rng.unit() - 2.0, 4.0 * rng.unit() - 2.0);
        scene.scale = 0.85 + 0.3 * rng.unit();
        scene
    }

    /// The full, canonical caption: "a large red square in the center on a blue background".
    pub fn caption(&self) -> String {
        let size = self.size.name();
        format!(
            "{} {size} {} {} {} on {} {} background",
            article(size),
            self.colour.name(),
            self.shape.name(),
            self.position.phrase(),
            article(self.background.name()),
            self.background.name()
        )
    }

    /// One of the varied captions (word order, articles, omitted parts), chosen by `rng`.
    pub fn varied_caption(&self, rng: &mut SplitMix64) -> String {
        let size = self.size.name();
        let colour = self.colour.name();
        let shape = self.shape.name();
        let bg = self.background.name();
        let phrases = self.position.phrases();
        let pos = rng.pick(&phrases).clone();
        let a_size = format!("{} {size}", article(size));
        let a_colour = format!("{} {colour}", article(colour));
        let a_bg = format!("{} {bg}", article(bg));
        match rng.below(10) {
            0..=2 => format!("{a_size} {colour} {shape} {pos} on {a_bg} background"),
            3 => format!("{size} {colour} {shape} {pos}, {bg} background"),
            4 => format!("{colour} {shape}, {bg} background"),
            5 => format!("{a_colour} {shape} {pos} on {a_bg} background"),
            6 => format!("{bg} background with {a_size} {colour} {shape} {pos}"),
            7 => format!("{a_size} {colour} {shape} {pos}"),
            8 => format!("{a_colour} {shape} on {a_bg} background"),
            _ => format!("{pos}: {a_size} {colour} {shape} on {bg}"),
        }
    }

    /// What `caption` (one of this scene's captions, or the empty one) names, as class indices
    /// in the order of [`CAPTION_CLASSES`]: shape colour, background colour, shape, size,
    /// position, each with a last class "not named".
    pub fn caption_labels(&self, caption: &str) -> [usize; 5] {
        let words: Vec<&str> = caption
            .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
            .filter(|w| !w.is_empty())
            .collect();
        let named = |word: &str| words.contains(&word);
        let or_none = |is_named: bool, index: usize, none: usize| {
            if is_named {
                index
            } else {
                none
            }
        };
        let spaced = format!(" {} ", words.join(" "));
        let position_named = self
            .position
            .phrases()
            .iter()
            .any(|p| spaced.contains(&format!(" {p} ")));
        [
            or_none(named(self.colour.name()), self.colour.index(), 8),
            or_none(named(self.background.name()), self.background.index(), 8),
            or_none(named(self.shape.name()), self.shape.index(), 3),
            or_none(named(self.size.name()), self.size.index(), 2),
            or_none(position_named, self.position.index(), 9),
        ]
    }

    /// The centre of the shape in pixels `(x, y)`.
    pub fn centre(&self) -> (f64, f64) {
        let (row, column) = self.position.cell();
        let mid = IMAGE_SIZE as f64 / 2.0;
        let offset = self.size.offset();
        (
            mid + (column as f64 - 1.0) * offset + self.jitter.0,
            mid + (row as f64 - 1.0) * offset + self.jitter.1,
        )
    }

    /// The fraction of each pixel the shape covers (row-major, 4x4 supersampling).
    pub fn coverage(&self) -> Vec<f64> {
        const SUB: usize = 4;
        let (cx, cy) = self.centre();
        let r = self.size.half_extent() * self.scale;
        let mut cover = Vec::with_capacity(IMAGE_SIZE * IMAGE_SIZE);
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let px = x as f64 + (sx as f64 + 0.5) / SUB as f64;
                        let py = y as f64 + (sy as f64 + 0.5) / SUB as f64;
                        if self.shape.contains(px - cx, py - cy, r) {
                            hits += 1;
                        }
                    }
                }
                cover.push(hits as f64 / (SUB * SUB) as f64);
            }
        }
        cover
    }

    /// Draws the scene: RGB8 pixels, row-major, anti-aliased by 4x4 supersampling.
    pub fn render(&self) -> Vec<u8> {
        let fg = self.colour.rgb();
        let bg = self.background.rgb();
        let mut pixels = Vec::with_capacity(IMAGE_SIZE * IMAGE_SIZE * 3);
        for alpha in self.coverage() {
            for c in 0..3 {
                let v = bg[c] as f64 * (1.0 - alpha) + fg[c] as f64 * alpha;
                pixels.push(v.round() as u8);
            }
        }
        pixels
    }
}

/// A deterministic, endless stream of training scenes and captions: item `i` depends only on
/// the seed and `i`, and no item shows a held-out combination.
#[derive(Debug, Clone)]
pub struct Dataset {
    seed: u64,
}

impl Dataset {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The generator for item `index`.
    fn rng(&self, index: u64) -> SplitMix64 {
        let mut mix = SplitMix64::new(self.seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
        mix.next_u64();
        mix
    }

    /// Item `index`: a training scene and its (varied) caption.
    pub fn item(&self, index: u64) -> (Scene, String) {
        let mut rng = self.rng(index);
        let scene = loop {
            let scene = Scene::random(&mut rng);
            if !scene.held_out() {
                break scene;
            }
        };
        let caption = scene.varied_caption(&mut rng);
        (scene, caption)
    }

    /// Items `start..start + count`: their scenes and captions.
    pub fn items(&self, start: u64, count: usize) -> (Vec<Scene>, Vec<String>) {
        (0..count as u64).map(|i| self.item(start + i)).unzip()
    }

    /// Items `start..start + count` as images `(count, 3, 64, 64)` in `[-1, 1]` and captions.
    pub fn batch(
        &self,
        start: u64,
        count: usize,
        device: &Device,
    ) -> Result<(Tensor, Vec<String>)> {
        let (scenes, captions) = self.items(start, count);
        Ok((scenes_to_tensor(&scenes, device)?, captions))
    }
}

/// How much of each `factor x factor` cell the shape of each scene covers:
/// `(n, 1, 64 / factor, 64 / factor)` in `[0, 1]`.
pub fn coverage_to_tensor(scenes: &[Scene], factor: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = scenes
        .iter()
        .flat_map(|scene| scene.coverage())
        .map(|c| c as f32)
        .collect();
    let full = Tensor::from_vec(data, (scenes.len(), 1, IMAGE_SIZE, IMAGE_SIZE), device)?;
    Ok(full.avg_pool2d(factor)?)
}

/// Renders scenes into one `(n, 3, 64, 64)` tensor in `[-1, 1]`.
pub fn scenes_to_tensor(scenes: &[Scene], device: &Device) -> Result<Tensor> {
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut data = vec![0f32; scenes.len() * 3 * plane];
    for (n, scene) in scenes.iter().enumerate() {
        let pixels = scene.render();
        for i in 0..plane {
            for c in 0..3 {
                data[n * 3 * plane + c * plane + i] = pixels[3 * i + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (scenes.len(), 3, IMAGE_SIZE, IMAGE_SIZE),
        device,
    )?)
}

/// The words the captions use (the vocabulary the shapes model understands).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Colour::ALL.iter().map(|c| c.name()).collect();
    words.extend(Shape::ALL.iter().map(|s| s.name()));
    words.extend(Size::ALL.iter().map(|s| s.name()));
    words.extend([
        "top",
        "bottom",
        "left",
        "right",
        "center",
        "middle",
        "corner",
        "side",
        "edge",
        "a",
        "an",
        "in",
        "at",
        "on",
        "the",
        "with",
        "background",
        ",",
        ":",
    ]);
    words
}

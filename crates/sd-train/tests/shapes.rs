//! The shapes data set and the pixel evaluator, without any model.

use sd_train::shapes::{
    coverage_to_tensor, evaluation_scenes, measure, Attribute, Colour, Dataset, EvalReport,
    Position, Scene, Shape,
};

fn image_of(scene: &Scene) -> image::RgbImage {
    image::RgbImage::from_raw(64, 64, scene.render()).unwrap()
}

#[test]
fn evaluator_reads_every_attribute_back_from_rendered_scenes() {
    let mut report = EvalReport::default();
    for scene in evaluation_scenes(200, 7) {
        report.add(scene, measure(&image_of(&scene)));
    }
    // The shape is read from how much of its bounding box the mask fills; anti-aliased edges
    // on close colours blur that a little, so it is held to 95%.
    assert!(report.tally(Attribute::Shape).correct >= 190);
    for attribute in [
        Attribute::Colour,
        Attribute::Background,
        Attribute::Position,
        Attribute::Size,
    ] {
        let tally = report.tally(attribute);
        assert_eq!(tally.total, 200);
        assert_eq!(
            tally.correct,
            200,
            "{} misread: {:?}",
            attribute.name(),
            report
                .results
                .iter()
                .find(|(s, m)| !attribute.matches(s, m))
        );
    }
}

#[test]
fn evaluator_reads_jittered_training_scenes() {
    let data = Dataset::new(3);
    let mut report = EvalReport::default();
    for i in 0..300 {
        let (scene, _) = data.item(i);
        report.add(scene, measure(&image_of(&scene)));
    }
    for attribute in [
        Attribute::Colour,
        Attribute::Background,
        Attribute::Position,
    ] {
        assert_eq!(report.tally(attribute).correct, 300, "{}", attribute.name());
    }
}

#[test]
fn training_stream_is_deterministic_and_never_shows_held_out_combinations() {
    let (a, b) = (Dataset::new(11), Dataset::new(11));
    let mut captions = std::collections::HashSet::new();
    for i in 0..2000 {
        let (scene, caption) = a.item(i);
        assert_eq!((scene, caption.clone()), b.item(i));
        assert!(!scene.held_out(), "item {i} is held out: {caption}");
        assert_ne!(scene.colour, scene.background);
        captions.insert(caption);
    }
    assert!(captions.len() > 1000, "too little caption variety");
    assert_ne!(Dataset::new(12).item(0), a.item(0));
}

#[test]
fn held_out_rule_keeps_one_position_per_colour_and_shape() {
    let mut held = 0;
    for colour in Colour::ALL {
        for shape in Shape::ALL {
            let n = Position::ALL
                .iter()
                .filter(|&&p| Scene::is_held_out(colour, shape, p))
                .count();
            assert_eq!(n, 1);
            held += n;
        }
    }
    assert_eq!(held, 24);
    let scenes = evaluation_scenes(120, 0);
    assert_eq!(scenes.len(), 120);
    assert_eq!(scenes.iter().filter(|s| s.held_out()).count(), 24);
}

#[test]
fn canonical_caption_reads_like_the_issue() {
    let scene = Scene::new(
        Colour::Red,
        Colour::Blue,
        Shape::Square,
        sd_train::shapes::Size::Large,
        Position::Center,
    );
    assert_eq!(
        scene.caption(),
        "a large red square in the center on a blue background"
    );
    let orange = Scene::new(
        Colour::Orange,
        Colour::Black,
        Shape::Circle,
        sd_train::shapes::Size::Small,
        Position::TopLeft,
    );
    assert_eq!(
        orange.caption(),
        "a small orange circle in the top left corner on a black background"
    );
}

#[test]
fn coverage_marks_the_shape_and_pools_to_latent_cells() {
    let data = Dataset::new(3);
    let (scenes, _) = data.items(10, 4);
    let full = coverage_to_tensor(&scenes, 1, &candle_core::Device::Cpu).unwrap();
    let pooled = coverage_to_tensor(&scenes, 4, &candle_core::Device::Cpu).unwrap();
    assert_eq!(full.dims(), &[4, 1, 64, 64]);
    assert_eq!(pooled.dims(), &[4, 1, 16, 16]);
    let full = full.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    let pooled = pooled.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    for (n, (f, p)) in full.iter().zip(&pooled).enumerate() {
        let scene = &scenes[n];
        let pixels = scene.render();
        let bg = scene.background.rgb();
        // Covered pixels are exactly the ones not of the background's colour.
        for (i, &c) in f.iter().enumerate() {
            let px = [pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2]];
            assert!((0.0..=1.0).contains(&c));
            if c == 0.0 {
                assert_eq!(px, bg, "item {n} pixel {i}");
            }
        }
        // Pooling keeps the covered area (in pixels) and the shape is neither empty nor all.
        let area: f32 = f.iter().sum();
        let pooled_area: f32 = p.iter().sum::<f32>() * 16.0;
        assert!((area - pooled_area).abs() < 1e-2, "{area} vs {pooled_area}");
        assert!(area > 50.0 && area < 64.0 * 64.0 / 2.0, "area {area}");
    }
}

#[test]
fn caption_labels_name_exactly_what_the_caption_says() {
    use sd_train::shapes::{Size, SplitMix64, CAPTION_CLASSES};
    let scene = Scene::new(
        Colour::Red,
        Colour::Blue,
        Shape::Square,
        Size::Large,
        Position::TopLeft,
    );
    let all = [
        Colour::Red.index(),
        Colour::Blue.index(),
        Shape::Square.index(),
        Size::Large.index(),
        Position::TopLeft.index(),
    ];
    assert_eq!(scene.caption_labels(&scene.caption()), all);
    // "not named" is each attribute's last class.
    let none = CAPTION_CLASSES.map(|n| n - 1);
    assert_eq!(scene.caption_labels(""), none);
    assert_eq!(
        scene.caption_labels("red square, blue background"),
        [all[0], all[1], all[2], none[3], none[4]]
    );
    assert_eq!(
        scene.caption_labels("top left: a large red square on blue"),
        all
    );
    assert_eq!(
        scene.caption_labels("a large red square at the top left corner"),
        [all[0], none[1], all[2], all[3], all[4]]
    );
    // Every varied caption names the shape's colour and the shape, and whatever else it names
    // is this scene's.
    let mut rng = SplitMix64::new(5);
    let mut named_position = 0;
    for _ in 0..200 {
        let caption = scene.varied_caption(&mut rng);
        let labels = scene.caption_labels(&caption);
        for (k, label) in labels.iter().enumerate() {
            assert!(
                *label == all[k] || (k >= 1 && k != 2 && *label == none[k]),
                "{caption}: {labels:?}"
            );
        }
        named_position += (labels[4] == all[4]) as usize;
    }
    assert!((100..200).contains(&named_position), "{named_position}");
}

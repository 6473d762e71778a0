//! A1111 extras at library level, one module each: variation seeds and seed resize, per-image
//! batch seeds and ENSD, textual inversion from `.pt`/`.bin` pickles, kohya LoRA with LDM module names, and the
//! hires fix's "Latent" upscaler.

mod common;

mod variation {
    //! A1111 variation seeds and seed resize: the initial noise against torch's (CPU randn, and
    //! the CUDA Philox transcription) with A1111's slerp and centre paste
    //! (tools/reference/parts/variation.py).

    use super::common;

    use stable_diffusion::candle_core::Device;
    use stable_diffusion::pipeline::{initial_noise, GenerationRequest, RngKind};
    use stable_diffusion::rng::{NoiseSource, TorchCpuRng};

    fn request_of(case: &serde_json::Value) -> GenerationRequest {
        let resize = case.get("resize").map(|r| {
            (
                r[0].as_u64().unwrap() as usize,
                r[1].as_u64().unwrap() as usize,
            )
        });
        GenerationRequest {
            seed: Some(case["seed"].as_u64().unwrap()),
            variation_seed: case.get("variation_seed").map(|v| v.as_u64().unwrap()),
            variation_strength: case.get("strength").map_or(0.0, |v| v.as_f64().unwrap()),
            seed_resize_from: resize,
            rng: case
                .get("rng")
                .map_or(RngKind::Cpu, |v| v.as_str().unwrap().parse().unwrap()),
            width: Some(64),
            height: Some(64),
            ..Default::default()
        }
    }

    fn stream(request: &GenerationRequest) -> Box<dyn NoiseSource> {
        request.rng.stream(request.seed_value())
    }

    #[test]
    fn variation_and_seed_resize_noise_match_a1111_formula() {
        let cases = common::load_json("variation/cases.json");
        let expected = common::load_tensors("variation/noise.safetensors");
        for case in cases.as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let request = request_of(case);
            request.validate(8).unwrap();
            let mut rng = stream(&request);
            let noise =
                initial_noise(&request, rng.as_mut(), &[1, 4, 8, 8], 8, &Device::Cpu).unwrap();
            let diff = common::max_abs_diff(&noise, &expected[name]);
            eprintln!("{name}: max |diff| {diff:e}");
            assert!(diff <= 1e-5, "{name}: max |diff| {diff}");
        }
    }

    #[test]
    fn without_variation_or_resize_the_noise_is_the_plain_stream() {
        let request = GenerationRequest {
            seed: Some(1234),
            variation_seed: Some(77),
            variation_strength: 0.0,
            ..Default::default()
        };
        let noise = initial_noise(
            &request,
            &mut TorchCpuRng::new(1234),
            &[1, 4, 8, 8],
            8,
            &Device::Cpu,
        )
        .unwrap();
        let plain = TorchCpuRng::new(1234)
            .randn(&[1, 4, 8, 8], &Device::Cpu)
            .unwrap();
        assert_eq!(common::max_abs_diff(&noise, &plain), 0.0);
    }

    #[test]
    fn bad_variation_settings_are_refused_by_name() {
        let strength = GenerationRequest {
            variation_seed: Some(1),
            variation_strength: 1.5,
            ..Default::default()
        };
        let err = strength.validate(8).unwrap_err().to_string();
        assert!(err.contains("variation strength"), "{err}");
        let resize = GenerationRequest {
            seed_resize_from: Some((4, 64)),
            ..Default::default()
        };
        let err = resize.validate(8).unwrap_err().to_string();
        assert!(err.contains("seed resize from"), "{err}");
    }

    #[test]
    fn prompts_above_the_length_limit_are_refused_by_name() {
        use stable_diffusion::pipeline::MAX_PROMPT_BYTES;
        // Nested open brackets: the emphasis parser's worst case, at the limit, is accepted.
        let at_limit = "(a".repeat(MAX_PROMPT_BYTES / 2);
        let ok = GenerationRequest {
            prompt: at_limit.clone(),
            width: Some(64),
            height: Some(64),
            seed: Some(1),
            ..Default::default()
        };
        ok.validate(8).unwrap();
        let long = format!("{at_limit}!");
        for negative in [false, true] {
            let mut request = GenerationRequest::default();
            if negative {
                request.negative_prompt = long.clone();
            } else {
                request.prompt = long.clone();
            }
            let err = request.validate(8).unwrap_err().to_string();
            let what = if negative {
                "negative prompt"
            } else {
                "prompt"
            };
            assert!(
                err.contains(what) && err.contains(&MAX_PROMPT_BYTES.to_string()),
                "{err}"
            );
        }
    }
}

mod batch_seeds {
    //! A1111's per-image streams for batches (its ImageRNG) with the k-diffusion flavor: the
    //! initial noise and the next two draws against the reference's rules
    //! (tools/reference/parts/image_rng.py), every image of a batch re-made alone from its
    //! infotext seeds, and ENSD refused where diffusers' one stream is used.

    use super::common;

    use stable_diffusion::candle_core::{Device, Tensor};
    use stable_diffusion::pipeline::{
        Control, GenerationRequest, Inputs, LoadOptions, RunNoise, StableDiffusion,
    };
    use stable_diffusion::rng::NoiseSource;
    use stable_diffusion::scheduler::{SamplerFlavor, SamplerOptions};

    fn a1111(request: GenerationRequest) -> GenerationRequest {
        GenerationRequest {
            sampler: "Euler a".parse().unwrap(),
            sampler_options: SamplerOptions {
                flavor: Some(SamplerFlavor::KDiffusion),
                ..Default::default()
            },
            ..request
        }
    }

    fn request_of(case: &serde_json::Value) -> GenerationRequest {
        let number = |key: &str| case.get(key).map(|v| v.as_u64().unwrap());
        a1111(GenerationRequest {
            seed: Some(number("seed").unwrap()),
            batch_size: number("batch").unwrap() as usize,
            variation_seed: number("variation_seed"),
            variation_strength: case.get("strength").map_or(0.0, |v| v.as_f64().unwrap()),
            seed_resize_from: case.get("resize").map(|r| {
                (
                    r[0].as_u64().unwrap() as usize,
                    r[1].as_u64().unwrap() as usize,
                )
            }),
            eta_noise_seed_delta: number("ensd").unwrap_or(0),
            rng: case
                .get("rng")
                .map_or(Default::default(), |v| v.as_str().unwrap().parse().unwrap()),
            width: Some(64),
            height: Some(64),
            ..Default::default()
        })
    }

    #[test]
    fn per_image_streams_draw_as_a1111s_image_rng() {
        let cases = common::load_json("image_rng/cases.json");
        let expected = common::load_tensors("image_rng/noise.safetensors");
        let cpu = Device::Cpu;
        for case in cases.as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let request = request_of(case);
            request.validate(8).unwrap();
            let mut rng = request.noise_streams().unwrap();
            assert!(matches!(rng, RunNoise::PerImage(_)), "{name}");
            let shape = [request.batch_size, 4, 8, 8];
            let first = rng.initial_noise(&request, &shape, 8, &cpu).unwrap();
            let next1 = rng.randn(&shape, &cpu).unwrap();
            let next2 = rng.randn(&shape, &cpu).unwrap();
            for (what, ours) in [("first", first), ("next1", next1), ("next2", next2)] {
                let diff = common::max_abs_diff(&ours, &expected[&format!("{name}.{what}")]);
                eprintln!("{name}.{what}: max |diff| {diff:e}");
                assert!(diff <= 1e-5, "{name}.{what}: max |diff| {diff}");
            }
        }
    }

    #[test]
    fn diffusers_flavor_keeps_one_stream_and_refuses_ensd() {
        let request = GenerationRequest {
            batch_size: 2,
            ..Default::default()
        };
        assert!(matches!(
            request.noise_streams().unwrap(),
            RunNoise::Shared(_)
        ));
        let err = GenerationRequest {
            eta_noise_seed_delta: 31337,
            ..request
        }
        .validate(8)
        .unwrap_err()
        .to_string();
        assert!(err.contains("eta noise seed delta"), "{err}");
    }

    /// The latents of image `i` of a batch, made alone from the seeds its infotext carries.
    fn alone(model: &StableDiffusion, request: &GenerationRequest, i: usize) -> Tensor {
        let info = request.to_infotext("", None, i);
        let text = info.to_string();
        assert!(!text.contains("Batch size"), "{text}");
        let single = GenerationRequest::from_infotext(&info).unwrap();
        assert_eq!(single.batch_size, 1, "{text}");
        // The infotext names the A1111 sampler, so the flavor follows without being forced.
        assert!(single.per_image_seeds().unwrap(), "{text}");
        let generation = model
            .generate(&single, &Inputs::default(), &mut |_| Control::Continue)
            .unwrap();
        generation.latents.get(0).unwrap()
    }

    #[test]
    fn every_image_of_an_a1111_batch_is_remade_alone_from_its_infotext() {
        let model = StableDiffusion::load(
            &common::fixture("models/tiny-sd15"),
            &LoadOptions::default(),
        )
        .unwrap();
        for (variation, ensd) in [(None, 0), (Some(500), 0), (None, 31337)] {
            let request = a1111(GenerationRequest {
                prompt: "a red circle".into(),
                width: Some(32),
                height: Some(32),
                steps: 3,
                seed: Some(40),
                batch_size: 3,
                variation_seed: variation,
                variation_strength: if variation.is_some() { 0.4 } else { 0.0 },
                eta_noise_seed_delta: ensd,
                ..Default::default()
            });
            let batch = model
                .generate(&request, &Inputs::default(), &mut |_| Control::Continue)
                .unwrap();
            for i in 0..3 {
                // A batched UNet call rounds differently from a single one (measured: up to
                // 3.3e-4 here); a wrong seed or stream is off by O(1).
                let diff = common::max_abs_diff(
                    &batch.latents.get(i).unwrap(),
                    &alone(&model, &request, i),
                );
                assert!(
                    diff <= 1e-3,
                    "image {i} (variation {variation:?}, ENSD {ensd}): max |diff| {diff}"
                );
            }
            let apart = common::max_abs_diff(
                &batch.latents.get(0).unwrap(),
                &batch.latents.get(1).unwrap(),
            );
            assert!(apart > 0.1, "images 0 and 1 alike: {apart}");
        }
    }
}

mod embeddings_pt {
    //! Textual inversion from `torch.save` pickles (A1111's `.pt` with `string_to_param`, an
    //! `emb_params` `.pt`, diffusers' `learned_embeds.bin`), read by the restricted reader: each
    //! must give exactly the conditioning of the same vectors from `.safetensors`
    //! (tools/reference/parts/prompts_pt.py).

    use super::common;

    use stable_diffusion::loading::embeddings::TextualInversion;
    use stable_diffusion::pipeline::{LoadOptions, StableDiffusion, TextOptions};
    use stable_diffusion::prompt::PromptSyntax;

    fn tiny_sd15() -> StableDiffusion {
        StableDiffusion::load(
            &common::fixture("models/tiny-sd15"),
            &LoadOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn pt_and_bin_embeddings_condition_exactly_like_their_safetensors() {
        let dir = common::fixture("prompts");
        let mut model = tiny_sd15();
        let reference = TextualInversion::load(&dir.join("tivec.safetensors")).unwrap();
        model.add_embedding(&reference).unwrap();
        let single = TextualInversion::load(&dir.join("tisingle.safetensors")).unwrap();
        model.add_embedding(&single).unwrap();
        for (file, name) in [
            ("tivecpt.pt", "tivecpt"),
            ("tivecparam.pt", "tivecparam"),
            ("bin/learned_embeds.bin", "tibin"),
        ] {
            let embedding = TextualInversion::load(&dir.join(file)).unwrap();
            assert_eq!(embedding.name, name);
            let vectors = embedding.first.as_ref().unwrap();
            let expected = if name == "tibin" { &single } else { &reference };
            let diff = common::max_abs_diff(vectors, expected.first.as_ref().unwrap());
            assert_eq!(diff, 0.0, "{file}: vectors differ by {diff}");
            model.add_embedding(&embedding).unwrap();
        }
        let options = TextOptions {
            syntax: PromptSyntax::A1111,
            clip_skip: 1,
        };
        let encode = |prompt: &str| {
            model
                .encode_prompt_with(prompt, options, 0)
                .unwrap()
                .context
        };
        let expected = encode("a (tivec:1.2) circle, tisingle");
        for (name, single_name) in [
            ("tivecpt", "tisingle"),
            ("tivecparam", "tisingle"),
            ("tivec", "tibin"),
        ] {
            let actual = encode(&format!("a ({name}:1.2) circle, {single_name}"));
            let diff = common::max_abs_diff(&actual, &expected);
            eprintln!("{name} + {single_name}: max |diff| {diff:e}");
            assert_eq!(diff, 0.0, "{name} + {single_name}");
        }
        // And the embedding is used: without it the prompt reads differently.
        let plain = encode("a (x:1.2) circle, y");
        assert!(common::max_abs_diff(&plain, &expected) > 1e-3);
    }

    #[test]
    fn a_pickle_that_calls_code_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sd-ti-pt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A legacy-format pickle calling os.system: never run, refused by name.
        let evil = dir.join("evil.pt");
        std::fs::write(
            &evil,
            b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
        )
        .unwrap();
        let err = TextualInversion::load(&evil).unwrap_err().to_string();
        assert!(err.contains("evil.pt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

mod lora_ldm {
    //! kohya LoRA files that name UNet modules with the original LDM names
    //! (`lora_unet_input_blocks_1_1_proj_in`): mapped through the single-file tables, they patch
    //! the model exactly as the same network with diffusers names does
    //! (fixtures/lora/kohya_ldm.safetensors from tools/reference/parts/lora_ldm.py).

    use super::common;

    use stable_diffusion::loading::LoraSpec;
    use stable_diffusion::pipeline::{
        Control, GenerationRequest, Inputs, LoadOptions, StableDiffusion,
    };

    fn with_lora(file: &str) -> StableDiffusion {
        let options = LoadOptions {
            loras: vec![LoraSpec {
                path: common::fixture("lora").join(file),
                weight: 0.8,
            }],
            ..Default::default()
        };
        StableDiffusion::load(&common::fixture("models/tiny-sd15"), &options).unwrap()
    }

    fn latents(model: &StableDiffusion) -> stable_diffusion::candle_core::Tensor {
        let request = GenerationRequest {
            prompt: "a red circle".into(),
            width: Some(32),
            height: Some(32),
            steps: 2,
            seed: Some(3),
            ..Default::default()
        };
        model
            .generate(&request, &Inputs::default(), &mut |_| Control::Continue)
            .unwrap()
            .latents
    }

    #[test]
    fn kohya_lora_with_ldm_unet_names_patches_like_diffusers_names() {
        let diffusers_names = with_lora("kohya.safetensors");
        let ldm_names = with_lora("kohya_ldm.safetensors");
        assert!(
            diffusers_names.lora_warnings().is_empty(),
            "{:?}",
            diffusers_names.lora_warnings()
        );
        assert!(
            ldm_names.lora_warnings().is_empty(),
            "{:?}",
            ldm_names.lora_warnings()
        );
        let expected = latents(&diffusers_names);
        let diff = common::max_abs_diff(&latents(&ldm_names), &expected);
        assert_eq!(diff, 0.0);
        // The network does change the model.
        let plain = StableDiffusion::load(
            &common::fixture("models/tiny-sd15"),
            &LoadOptions::default(),
        )
        .unwrap();
        assert!(common::max_abs_diff(&latents(&plain), &expected) > 1e-4);
    }
}

mod hires_latent {
    //! Hires fix with A1111's "Latent" upscaler: the bilinear enlargement against torch's
    //! `interpolate(mode="bilinear", antialias=False)` (tools/reference/parts/latent_upscale.py),
    //! and the hires run equal to img2img from the enlarged first-pass latents; the hires settings
    //! travel through the infotext.

    use super::common;

    use stable_diffusion::image::InfoText;
    use stable_diffusion::pipeline::{
        upscale_latents_bilinear, Control, GenerationRequest, HiresFix, HiresUpscaler, Inputs,
        LoadOptions, StableDiffusion,
    };

    #[test]
    fn bilinear_latent_upscale_matches_torch_interpolate() {
        let tensors = common::load_tensors("latent_upscale/upscale.safetensors");
        let input = &tensors["in"];
        for (h, w) in [(12, 12), (16, 16), (10, 14), (9, 8)] {
            let actual = upscale_latents_bilinear(input, h, w).unwrap();
            let expected = &tensors[&format!("out_{h}x{w}")];
            let diff = common::max_abs_diff(&actual, expected);
            eprintln!("{h}x{w}: max |diff| {diff:e}");
            assert!(diff <= 1e-6, "{h}x{w}: max |diff| {diff}");
        }
    }

    /// The tiny SD 1.5 model and a 32² Euler txt2img request of `steps` steps from `seed`.
    fn tiny_txt2img(steps: usize, seed: u64) -> (StableDiffusion, GenerationRequest) {
        let model = StableDiffusion::load(
            &common::fixture("models/tiny-sd15"),
            &LoadOptions::default(),
        )
        .unwrap();
        let request = GenerationRequest {
            prompt: "a red circle".into(),
            width: Some(32),
            height: Some(32),
            steps,
            sampler: "euler".parse().unwrap(),
            seed: Some(seed),
            ..Default::default()
        };
        (model, request)
    }

    #[test]
    fn latent_hires_equals_img2img_from_the_enlarged_latents() {
        let (model, request) = tiny_txt2img(3, 21);
        let hires = HiresFix {
            scale: 1.5,
            steps: 4,
            strength: 0.6,
            upscaler: HiresUpscaler::Latent,
            resize: None,
        };
        let together = model
            .generate_hires(&request, &hires, &mut |_| Control::Continue)
            .unwrap();
        assert_eq!(together.images[0].dimensions(), (48, 48));
        let first = model
            .generate(&request, &Inputs::default(), &mut |_| Control::Continue)
            .unwrap();
        let enlarged = upscale_latents_bilinear(&first.latents, 6, 6).unwrap();
        let by_hand = model
            .generate(
                &hires.second_pass(&request, 8),
                &Inputs {
                    init_latents: Some(&enlarged),
                    hires_first_pass_steps: Some(3),
                    ..Inputs::default()
                },
                &mut |_| Control::Continue,
            )
            .unwrap();
        assert_eq!(
            common::max_abs_diff(&together.latents, &by_hand.latents),
            0.0
        );
        let lanczos = model
            .generate_hires(
                &request,
                &HiresFix {
                    upscaler: HiresUpscaler::Lanczos,
                    ..hires.clone()
                },
                &mut |_| Control::Continue,
            )
            .unwrap();
        assert!(common::max_abs_diff(&together.latents, &lanczos.latents) > 1e-3);
    }

    #[test]
    fn a_hires_resize_runs_the_same_pass_as_the_equal_scale_and_a_crop_is_refused_by_name() {
        let (model, request) = tiny_txt2img(2, 3);
        let scaled = HiresFix {
            scale: 1.5,
            steps: 2,
            strength: 0.5,
            upscaler: HiresUpscaler::Latent,
            resize: None,
        };
        let run =
            |hires: &HiresFix| model.generate_hires(&request, hires, &mut |_| Control::Continue);
        let by_scale = run(&scaled).unwrap();
        let by_size = run(&HiresFix {
            scale: 1.0,
            resize: Some((48, 0)),
            ..scaled.clone()
        })
        .unwrap();
        assert_eq!(by_size.images[0].dimensions(), (48, 48));
        assert_eq!(
            common::max_abs_diff(&by_scale.latents, &by_size.latents),
            0.0
        );
        let err = run(&HiresFix {
            resize: Some((48, 64)),
            ..scaled
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("hires resize") && err.contains("48x64"),
            "{err}"
        );
        // The first pass alone is unchanged by any of this.
        let _ = model
            .generate(&request, &Inputs::default(), &mut |_| Control::Continue)
            .unwrap();
    }

    #[test]
    fn hires_settings_round_trip_through_infotext() {
        let request = GenerationRequest {
            prompt: "a cat".into(),
            width: Some(64),
            height: Some(64),
            hires: Some(HiresFix {
                scale: 2.0,
                steps: 12,
                strength: 0.45,
                upscaler: HiresUpscaler::Latent,
                resize: None,
            }),
            ..Default::default()
        };
        let text = request.to_infotext("tiny", None, 0).to_string();
        for key in [
            "Denoising strength: 0.45",
            "Hires upscale: 2",
            "Hires steps: 12",
            "Hires upscaler: Latent",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        let back = GenerationRequest::from_infotext(&InfoText::parse(&text)).unwrap();
        assert_eq!(back.hires, request.hires);
        // A1111 without "Hires upscaler" means its default, Latent; an upscaler not built here is
        // refused by name.
        let a1111 = InfoText::parse(
            "a cat\nSteps: 20, Seed: 1, Size: 512x512, Hires upscale: 1.5, Denoising strength: 0.7",
        );
        let hires = GenerationRequest::from_infotext(&a1111)
            .unwrap()
            .hires
            .unwrap();
        assert_eq!(hires.upscaler, HiresUpscaler::Latent);
        let esrgan =
            InfoText::parse("a cat\nSteps: 20, Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+");
        let err = GenerationRequest::from_infotext(&esrgan)
            .unwrap_err()
            .to_string();
        assert!(err.contains("R-ESRGAN 4x+"), "{err}");
    }
}

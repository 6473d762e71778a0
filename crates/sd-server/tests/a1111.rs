//! The A1111 API of `sd serve` in process on the tiny fixture models: the reply's shape and
//! images (the library's, image for image), batches and iterations with A1111's seeds,
//! img2img with a mask, progress during a run, interrupt and skip, the queue's 429, the
//! settings and lists, PNG info, and every kind of bad input answered with a 4xx naming it.

mod common;

use common::http::{get, post, post_raw, request};
use common::{decode, png_base64, tiny_config, tiny_store, Gate, TestServer};
use serde_json::{json, Value};
use stable_diffusion::image::{ImageData, InfoText};
use stable_diffusion::pipeline::{run, Control, GenerationRequest, LoadOptions, RngKind};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{SamplerFlavor, SamplerKind, SigmaSchedule};

/// A small txt2img body: 64x64, 4 steps.
fn small(extra: Value) -> Value {
    let mut body = json!({
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "steps": 4,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "cfg_scale": 6.5,
        "sampler_name": "DPM++ 2M Karras",
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// The reply's `info`, parsed.
fn info(reply: &Value) -> Value {
    serde_json::from_str(reply["info"].as_str().expect("info is a string")).expect("info is JSON")
}

/// What the library makes of `request` with the tiny store.
fn library_images(request: &GenerationRequest) -> (Vec<image::RgbImage>, Vec<String>) {
    let (store, _) = tiny_store();
    let output = run(&store, &LoadOptions::default(), request, &mut |_| {
        Control::Continue
    })
    .expect("the library runs the request");
    let infotexts = output.infotexts.iter().map(|i| i.to_string()).collect();
    (output.images, infotexts)
}

/// The library request an A1111 client means by `small(...)`: A1111's syntax, sampler and
/// schedule, torch's CUDA noise.
fn library_request(seed: u64) -> GenerationRequest {
    let mut request = GenerationRequest {
        prompt: "a red circle".into(),
        negative_prompt: "blurry".into(),
        steps: 4,
        width: Some(64),
        height: Some(64),
        seed: Some(seed),
        cfg_scale: 6.5,
        sampler: SamplerKind::DpmPp2M,
        schedule: SigmaSchedule::Karras,
        rng: RngKind::Cuda,
        prompt_syntax: PromptSyntax::A1111,
        ..GenerationRequest::default()
    };
    request.sampler_options.flavor = Some(SamplerFlavor::KDiffusion);
    request
}

#[test]
fn txt2img_reply_has_a1111s_shape_and_the_librarys_image() {
    let server = TestServer::start(tiny_config());
    let reply = post(server.addr, "/sdapi/v1/txt2img", &small(json!({})));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    let images = reply["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let text = images[0].as_str().unwrap();
    assert!(!text.starts_with("data:"), "raw base64, no data: prefix");
    let info = info(&reply);
    for key in [
        "prompt",
        "all_prompts",
        "negative_prompt",
        "seed",
        "all_seeds",
        "subseed",
        "all_subseeds",
        "width",
        "height",
        "sampler_name",
        "cfg_scale",
        "steps",
        "batch_size",
        "sd_model_name",
        "sd_model_hash",
        "clip_skip",
        "infotexts",
        "index_of_first_image",
        "job_timestamp",
        "version",
    ] {
        assert!(info.get(key).is_some(), "info lacks `{key}`: {info}");
    }
    assert_eq!(info["seed"], 1234);
    assert_eq!(info["all_seeds"], json!([1234]));
    assert_eq!(info["sampler_name"], "DPM++ 2M");
    assert_eq!(info["sd_model_name"], "tiny-sd15");
    assert_eq!(reply["parameters"]["steps"], 4);
    assert_eq!(reply["parameters"]["n_iter"], 1, "defaults are echoed");
    assert!(reply["parameters"].get("init_images").is_none());

    // The PNG carries the infotext, and the pixels are the library's for the same request.
    let data = ImageData::from_base64(text).unwrap();
    let chunks =
        stable_diffusion::image::png::png_text_from_bytes(&data.0, "<reply>".as_ref()).unwrap();
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert_eq!(chunks, [("parameters".to_string(), infotext.to_string())]);
    let (expected, expected_info) = library_images(&library_request(1234));
    assert_eq!(decode(text), expected[0]);
    assert_eq!(infotext, expected_info[0]);
    assert!(
        infotext.contains("Sampler: DPM++ 2M, Schedule type: Karras"),
        "{infotext}"
    );
}

#[test]
fn batches_and_iterations_follow_a1111s_seeds() {
    let server = TestServer::start(tiny_config());
    let reply = post(
        server.addr,
        "/sdapi/v1/txt2img",
        &small(json!({"seed": 50, "batch_size": 2, "n_iter": 2})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    let images = reply["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    let info = info(&reply);
    assert_eq!(info["all_seeds"], json!([50, 51, 52, 53]));
    assert_eq!(info["infotexts"].as_array().unwrap().len(), 4);
    // Image 3 is seed 53 alone, as in A1111.
    let (alone, _) = library_images(&library_request(53));
    assert_eq!(decode(images[3].as_str().unwrap()), alone[0]);
    let seed_of = |i: usize| {
        InfoText::parse(info["infotexts"][i].as_str().unwrap())
            .get("Seed")
            .map(String::from)
    };
    assert_eq!(seed_of(2).as_deref(), Some("52"));
}

#[test]
fn img2img_with_a_mask_is_the_librarys_inpainting_and_invert_flips_it() {
    let server = TestServer::start(tiny_config());
    let txt = post(server.addr, "/sdapi/v1/txt2img", &small(json!({}))).json();
    let init = txt["images"][0].as_str().unwrap().to_string();
    let mask = image::RgbImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mut inverted = mask.clone();
    image::imageops::invert(&mut inverted);
    let body = |mask: &image::RgbImage, invert: u8| {
        small(json!({
            "prompt": "a blue square",
            "init_images": [format!("data:image/png;base64,{init}")],
            "mask": png_base64(mask),
            "inpainting_mask_invert": invert,
            "denoising_strength": 0.6,
            "seed": 9,
        }))
    };
    let reply = post(server.addr, "/sdapi/v1/img2img", &body(&mask, 0));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    let image = decode(reply["images"][0].as_str().unwrap());
    assert_eq!(info(&reply)["denoising_strength"], 0.6);

    let mut request = library_request(9);
    request.prompt = "a blue square".into();
    request.init_image = Some(ImageData::from_base64(&init).unwrap());
    request.mask = Some(ImageData::from_base64(&png_base64(&mask)).unwrap());
    request.strength = 0.6;
    let (expected, _) = library_images(&request);
    assert_eq!(image, expected[0]);

    // The inverted mask with inpainting_mask_invert = 1 is the same mask.
    let flipped = post(server.addr, "/sdapi/v1/img2img", &body(&inverted, 1)).json();
    assert_eq!(decode(flipped["images"][0].as_str().unwrap()), image);
    let other = post(server.addr, "/sdapi/v1/img2img", &body(&inverted, 0)).json();
    assert_ne!(decode(other["images"][0].as_str().unwrap()), image);
}

#[test]
fn progress_shows_the_running_job_and_interrupt_returns_the_partial_image() {
    // Held at the second iteration's first step.
    let (gate, hook) = Gate::new(|r| r.iteration == 1 && r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let idle = get(addr, "/sdapi/v1/progress").json();
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(idle["progress"], 0.0);

    let client = std::thread::spawn(move || {
        post(
            addr,
            "/sdapi/v1/txt2img",
            &small(json!({"n_iter": 2, "steps": 6, "seed": 70})),
        )
    });
    let held = gate.wait();
    assert_eq!((held.iteration, held.step, held.steps), (1, 1, 6));
    let progress = get(addr, "/sdapi/v1/progress").json();
    assert_eq!(progress["state"]["sampling_step"], 1);
    assert_eq!(progress["state"]["sampling_steps"], 6);
    assert_eq!(progress["state"]["job_no"], 1);
    assert_eq!(progress["state"]["job_count"], 2);
    let fraction = progress["progress"].as_f64().unwrap();
    assert!(fraction > 0.5 && fraction < 1.0, "{progress}");
    assert!(progress["textinfo"].as_str().unwrap().contains("sampling"));
    assert!(progress["current_image"].is_null());

    assert_eq!(post(addr, "/sdapi/v1/interrupt", &json!({})).status, 200);
    let progress = get(addr, "/sdapi/v1/progress").json();
    assert_eq!(progress["state"]["interrupted"], true);
    gate.release();
    let reply = client.join().unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    // The first iteration whole, the second as it was at its first step (A1111's partial
    // image): another picture than the whole run of its seed.
    let images = reply["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(info(&reply)["all_seeds"], json!([70, 71]));
    let whole = post(
        addr,
        "/sdapi/v1/txt2img",
        &small(json!({"steps": 6, "seed": 71})),
    )
    .json();
    let partial = decode(images[1].as_str().unwrap());
    assert_eq!(partial.dimensions(), (64, 64));
    assert_ne!(partial, decode(whole["images"][0].as_str().unwrap()));
    // The worker is free again.
    let next = post(addr, "/sdapi/v1/txt2img", &small(json!({"steps": 2})));
    assert_eq!(next.status, 200);
}

#[test]
fn skip_drops_the_running_iteration_only() {
    let (gate, hook) = Gate::new(|r| r.iteration == 0 && r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let client = std::thread::spawn(move || {
        post(
            addr,
            "/sdapi/v1/txt2img",
            &small(json!({"n_iter": 2, "seed": 80})),
        )
    });
    gate.wait();
    assert_eq!(post(addr, "/sdapi/v1/skip", &json!({})).status, 200);
    gate.release();
    let reply = client.join().unwrap().json();
    assert_eq!(reply["images"].as_array().unwrap().len(), 1);
    assert_eq!(info(&reply)["all_seeds"], json!([81]));
}

#[test]
fn a_full_queue_answers_429_and_the_queued_jobs_still_finish() {
    let (gate, hook) = Gate::new(|r| r.step == 1);
    let mut config = tiny_config();
    config.queue_size = 1;
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let first = std::thread::spawn(move || post(addr, "/sdapi/v1/txt2img", &small(json!({}))));
    gate.wait();
    let second = std::thread::spawn(move || post(addr, "/sdapi/v1/txt2img", &small(json!({}))));
    // Wait (no timing asserted) until the second job is queued behind the held one.
    let mut queued = false;
    for _ in 0..6000 {
        if get(addr, "/sdapi/v1/progress").json()["state"]["queued"] == 1 {
            queued = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(queued, "the second job never showed up in the queue");
    let third = post(addr, "/sdapi/v1/txt2img", &small(json!({})));
    assert_eq!(third.status, 429);
    assert!(third.json()["detail"]
        .as_str()
        .unwrap()
        .contains("queue is full"));
    gate.release();
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
}

#[test]
fn bad_input_gets_a_4xx_naming_the_problem_never_a_500() {
    let mut config = tiny_config();
    config.body_limit = 4096;
    let server = TestServer::start(config);
    let addr = server.addr;
    let not_an_image = ImageData(b"hello, not a picture".to_vec()).to_base64();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/sdapi/v1/txt2img",
            b"{\"prompt\": ".to_vec(),
            422,
            "not valid JSON",
        ),
        (
            "/sdapi/v1/txt2img",
            b"[1, 2, 3]".to_vec(),
            422,
            "JSON object",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"steps": "many"}"#.to_vec(),
            422,
            "`steps`",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"width": 8192, "height": 64}"#.to_vec(),
            422,
            "`width`",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"width": 64, "height": 64, "steps": 0}"#.to_vec(),
            422,
            "`steps`",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"sampler_name": "Warp Drive"}"#.to_vec(),
            422,
            "`sampler_name`",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"scheduler": "warp"}"#.to_vec(),
            422,
            "`scheduler`",
        ),
        (
            "/sdapi/v1/txt2img",
            br#"{"override_settings": {"sd_model_checkpoint": "no-such-model"}}"#.to_vec(),
            422,
            "`override_settings.sd_model_checkpoint`",
        ),
        (
            "/sdapi/v1/img2img",
            br#"{"init_images": ["%%% not base64"]}"#.to_vec(),
            422,
            "`init_images[0]`",
        ),
        (
            "/sdapi/v1/img2img",
            format!(
                r#"{{"init_images": ["{not_an_image}"], "steps": 2, "width": 64, "height": 64}}"#
            )
            .into_bytes(),
            422,
            "init image",
        ),
        (
            "/sdapi/v1/img2img",
            br#"{"prompt": "x"}"#.to_vec(),
            422,
            "`init_images`",
        ),
        (
            "/sdapi/v1/options",
            br#"{"sd_model_checkpoint": "no-such-model"}"#.to_vec(),
            422,
            "`sd_model_checkpoint`",
        ),
        (
            "/sdapi/v1/options",
            br#"{"CLIP_stop_at_last_layers": 0}"#.to_vec(),
            422,
            "`CLIP_stop_at_last_layers`",
        ),
        (
            "/sdapi/v1/png-info",
            format!(r#"{{"image": "{not_an_image}"}}"#).into_bytes(),
            422,
            "`image`",
        ),
        ("/sdapi/v1/png-info", b"{}".to_vec(), 422, "`image`"),
        ("/sdapi/v1/txt2img", vec![b' '; 10_000], 413, "length limit"),
        (
            "/sdapi/v1/interrogate",
            b"{}".to_vec(),
            501,
            "not supported",
        ),
    ];
    for (path, body, status, needle) in cases {
        let reply = post_raw(addr, path, &body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(
            reply.status,
            status,
            "{path} {shown}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let json = reply.json();
        for key in ["error", "detail", "body", "errors"] {
            assert!(
                json.get(key).is_some(),
                "{path} {shown}: no `{key}` in {json}"
            );
        }
        let detail = json["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{path} {shown}: `{needle}` not in {detail}"
        );
    }
    // Unknown routes and methods answer JSON too.
    let reply = get(addr, "/sdapi/v1/no-such-route");
    assert_eq!(reply.status, 404);
    reply.json();
    let reply = get(addr, "/sdapi/v1/txt2img");
    assert_eq!(reply.status, 405);
    reply.json();
}

#[test]
fn options_switch_the_model_and_lists_describe_the_server() {
    let server = TestServer::start(tiny_config());
    let addr = server.addr;
    let options = get(addr, "/sdapi/v1/options").json();
    assert_eq!(options["sd_model_checkpoint"], "tiny-sd15");
    assert_eq!(options["CLIP_stop_at_last_layers"], 1);
    let models = get(addr, "/sdapi/v1/sd-models").json();
    let names: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-sd15", "tiny-sd2"]);

    let set = post(
        addr,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "tiny-sd2"}),
    );
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(
        get(addr, "/sdapi/v1/options").json()["sd_model_checkpoint"],
        "tiny-sd2"
    );
    let reply = post(addr, "/sdapi/v1/txt2img", &small(json!({"steps": 2}))).json();
    assert_eq!(info(&reply)["sd_model_name"], "tiny-sd2");
    // A request's override wins for that request only.
    let reply = post(
        addr,
        "/sdapi/v1/txt2img",
        &small(json!({"steps": 2, "override_settings": {"sd_model_checkpoint": "tiny-sd15"}})),
    )
    .json();
    assert_eq!(info(&reply)["sd_model_name"], "tiny-sd15");
    assert_eq!(
        get(addr, "/sdapi/v1/options").json()["sd_model_checkpoint"],
        "tiny-sd2"
    );

    let samplers = get(addr, "/sdapi/v1/samplers").json();
    let dpm = samplers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "DPM++ 2M")
        .expect("DPM++ 2M is listed");
    assert!(dpm["aliases"]
        .as_array()
        .unwrap()
        .contains(&json!("k_dpmpp_2m")));
    let schedulers = get(addr, "/sdapi/v1/schedulers").json();
    assert!(schedulers
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "karras" && s["label"] == "Karras"));
    for (path, empty) in [
        ("/sdapi/v1/prompt-styles", json!([])),
        ("/sdapi/v1/face-restorers", json!([])),
        ("/sdapi/v1/scripts", json!({"txt2img": [], "img2img": []})),
    ] {
        assert_eq!(get(addr, path).json(), empty, "{path}");
    }
    assert!(
        get(addr, "/sdapi/v1/memory").json()["ram"]["total"]
            .as_u64()
            .unwrap()
            > 0
    );
    for path in [
        "/sdapi/v1/refresh-checkpoints",
        "/sdapi/v1/unload-checkpoint",
    ] {
        assert_eq!(post(addr, path, &json!({})).status, 200, "{path}");
    }
}

#[test]
fn png_info_reads_back_the_infotext() {
    let server = TestServer::start(tiny_config());
    let reply = post(
        server.addr,
        "/sdapi/v1/txt2img",
        &small(json!({"steps": 2})),
    )
    .json();
    let image = reply["images"][0].as_str().unwrap();
    let png = post(server.addr, "/sdapi/v1/png-info", &json!({"image": image}));
    assert_eq!(png.status, 200);
    let png = png.json();
    assert_eq!(png["info"], info(&reply)["infotexts"][0]);
    assert_eq!(png["parameters"]["Steps"], "2");
    assert_eq!(png["parameters"]["Size-1"], "64");
    assert_eq!(png["parameters"]["Prompt"], "a red circle");
}

#[test]
fn basic_auth_guards_every_route() {
    let mut config = tiny_config();
    config.auth = vec![("alice".into(), "s3cret".into())];
    let server = TestServer::start(config);
    let addr = server.addr;
    let reply = get(addr, "/sdapi/v1/options");
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    reply.json();
    let wrong = ImageData(b"alice:guess".to_vec()).to_base64();
    let reply = request(
        addr,
        "GET",
        "/sdapi/v1/options",
        &[("Authorization", &format!("Basic {wrong}"))],
        b"",
    );
    assert_eq!(reply.status, 401);
    let right = ImageData(b"alice:s3cret".to_vec()).to_base64();
    let reply = request(
        addr,
        "GET",
        "/sdapi/v1/options",
        &[("Authorization", &format!("Basic {right}"))],
        b"",
    );
    assert_eq!(reply.status, 200);
}

#[test]
fn shutdown_cancels_the_running_job_and_answers_its_client() {
    let (gate, hook) = Gate::new(|r| r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let client = std::thread::spawn(move || post(addr, "/sdapi/v1/txt2img", &small(json!({}))));
    gate.wait();
    // Stop while the job is held mid-run; it is cancelled at its next step.
    let stopper = std::thread::spawn(move || server.stop());
    // Wait until the shutdown has begun (new connections are refused or answered 503).
    let mut stopping = false;
    for _ in 0..6000 {
        let refused = std::net::TcpStream::connect(addr).is_err();
        if refused {
            stopping = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(stopping, "the server kept accepting connections");
    gate.release();
    let reply = client.join().unwrap();
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.json()["detail"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    stopper.join().unwrap();
}

//! The native job API (`/api/v1/jobs`) in process on the tiny fixture models: submit → 202,
//! the result equal to the library's images, the event stream (status, progress, previews,
//! the end), cancel of a queued and of a running job, interrupt, the result's time-to-live
//! (410), delete, and bad input answered with a 4xx naming the problem.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, post, post_raw, request, Reply};
use common::{tiny_config, tiny_store, Gate, TestServer};
use serde_json::{json, Value};
use stable_diffusion::candle_core::{DType, Device};
use stable_diffusion::image::ImageData;
use stable_diffusion::pipeline::{run, Control, GenerationRequest, LoadOptions};
use stable_diffusion::vae::AutoencoderTiny;

/// A small request: 64x64, 4 steps.
fn small(seed: u64) -> GenerationRequest {
    GenerationRequest {
        prompt: "a red circle".into(),
        negative_prompt: "blurry".into(),
        steps: 4,
        width: Some(64),
        height: Some(64),
        seed: Some(seed),
        ..GenerationRequest::default()
    }
}

/// POSTs `request` to /api/v1/jobs; returns the reply (202 expected by callers).
fn submit(addr: SocketAddr, request: &GenerationRequest) -> Reply {
    post_raw(addr, "/api/v1/jobs", request.to_json().as_bytes())
}

/// The id in a submit reply.
fn id_of(reply: &Reply) -> u64 {
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["id"].as_u64().expect("an id")
}

/// Polls job `id` until it has ended; returns its status.
fn wait_end(addr: SocketAddr, id: u64) -> Value {
    let start = Instant::now();
    loop {
        let status = get(addr, &format!("/api/v1/jobs/{id}")).json();
        match status["status"].as_str().unwrap() {
            "queued" | "running" => {}
            _ => return status,
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "job {id} did not end: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_submitted_job_runs_and_its_result_is_the_librarys_images() {
    let server = TestServer::start(tiny_config());
    let addr = server.addr;
    let reply = submit(addr, &small(21));
    let id = id_of(&reply);
    assert_eq!(
        reply.header("location"),
        Some(&*format!("/api/v1/jobs/{id}"))
    );
    let first = reply.json();
    assert!(
        ["queued", "running"].contains(&first["status"].as_str().unwrap()),
        "{first}"
    );
    assert_eq!(first["request"]["seed"], 21);

    let status = wait_end(addr, id);
    assert_eq!(status["status"], "succeeded", "{status}");
    let images = status["result"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["seed"], 21);
    assert!(images[0].get("png").is_none(), "no base64 unless asked");

    // The PNG route and ?images=true give the same file, and it is the library's image.
    let png = get(addr, images[0]["url"].as_str().unwrap());
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-type"), Some("image/png"));
    let with_images = get(addr, &format!("/api/v1/jobs/{id}?images=true")).json();
    let base64 = with_images["result"]["images"][0]["png"].as_str().unwrap();
    assert_eq!(ImageData::from_base64(base64).unwrap().0, png.body);
    let (store, _) = tiny_store();
    let output = run(&store, &LoadOptions::default(), &small(21), &mut |_| {
        Control::Continue
    })
    .unwrap();
    let served = image::load_from_memory(&png.body).unwrap().to_rgb8();
    assert_eq!(served, output.images[0]);
    assert_eq!(images[0]["infotext"], output.infotexts[0].to_string());

    // The listing has it; an image past the end is 404.
    let list = get(addr, "/api/v1/jobs").json();
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id));
    assert_eq!(
        get(addr, &format!("/api/v1/jobs/{id}/images/1")).status,
        404
    );
}

/// Opens the event stream of job `id`; returns the connection once the first event came.
fn open_events(addr: SocketAddr, id: u64) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/v1/jobs/{id}/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: status") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream closed early");
        seen.extend_from_slice(&buffer[..n]);
    }
    (stream, seen)
}

/// The (name, data) of each event in an SSE body.
fn parse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            Some((name?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[test]
fn the_event_stream_tells_progress_previews_and_the_end() {
    let (gate, hook) = Gate::new(|r| r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let set = post(
        addr,
        "/sdapi/v1/options",
        &json!({"show_progress_every_n_steps": 1, "live_previews_enable": true}),
    );
    assert_eq!(set.status, 200);
    let id = id_of(&submit(addr, &small(5)));
    gate.wait();
    let (mut stream, mut raw) = open_events(addr, id);
    // Held at step 1: the A1111 progress route shows the same job's preview.
    let progress = get(addr, "/sdapi/v1/progress").json();
    let current = progress["current_image"].as_str().expect("a live preview");
    let preview = image::load_from_memory(&ImageData::from_base64(current).unwrap().0).unwrap();
    assert_eq!(
        (preview.width(), preview.height()),
        (8, 8),
        "an eighth of 64"
    );
    gate.release();
    stream.read_to_end(&mut raw).unwrap();
    let reply = common::http::parse(&raw);
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_events(&reply.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"status"), "{names:?}");
    assert_eq!(names.last(), Some(&"status"), "{names:?}");
    assert_eq!(events.last().unwrap().1["status"], "succeeded");
    let steps: Vec<u64> = events
        .iter()
        .filter(|(n, d)| n == "progress" && d["stage"] == "sampling")
        .map(|(_, d)| d["step"].as_u64().unwrap())
        .collect();
    assert!(steps.contains(&4), "the last step is reported: {steps:?}");
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    let previews: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "preview")
        .map(|(_, d)| d)
        .collect();
    // Steps 2..4 came after the stream opened (step 1's came before).
    assert!(previews.len() >= 3, "{names:?}");
    let last = previews.last().unwrap();
    assert_eq!(last["step"], 4);
    let png = ImageData::from_base64(last["image"].as_str().unwrap()).unwrap();
    assert_eq!(image::load_from_memory(&png.0).unwrap().width(), 8);

    // A stream opened after the end is the final status alone.
    let late = get(addr, &format!("/api/v1/jobs/{id}/events"));
    let late = parse_events(&late.body);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1["status"], "succeeded");
}

/// The width of the live preview that a server with the tiny TAESD and `options` set shows
/// for a running job, held at step 1 (the gate holds once, so one server per case).
fn held_preview_width(options: Value) -> u32 {
    let (gate, hook) = Gate::new(|r| r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let taesd = AutoencoderTiny::load(
        &common::fixtures().join("models/tiny-taesd"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    config.preview_vae = Some(Arc::new(taesd));
    let server = TestServer::start(config);
    let addr = server.addr;
    assert_eq!(
        get(addr, "/sdapi/v1/options").json()["show_progress_type"],
        "TAESD"
    );
    let set = post(addr, "/sdapi/v1/options", &options);
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    let id = id_of(&submit(addr, &small(1)));
    gate.wait();
    let progress = get(addr, "/sdapi/v1/progress").json();
    let current = progress["current_image"].as_str().expect("a live preview");
    let png = ImageData::from_base64(current).unwrap();
    let width = image::load_from_memory(&png.0).unwrap().width();
    gate.release();
    assert_eq!(wait_end(addr, id)["status"], "succeeded");
    width
}

#[test]
fn a_preview_vae_draws_full_size_previews_by_default_and_cheap_ones_on_request() {
    let every_step = json!({"show_progress_every_n_steps": 1});
    assert_eq!(
        held_preview_width(every_step),
        64,
        "the tiny VAE decodes at full size"
    );
    let cheap = json!({"show_progress_every_n_steps": 1, "show_progress_type": "Approx cheap"});
    assert_eq!(
        held_preview_width(cheap),
        8,
        "the cheap projection is an eighth"
    );
}

#[test]
fn taesd_previews_without_a_preview_vae_are_refused_naming_the_flag() {
    let server = TestServer::start(tiny_config());
    let reply = post(
        server.addr,
        "/sdapi/v1/options",
        &json!({"show_progress_type": "TAESD"}),
    );
    assert_eq!(
        reply.status,
        422,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        text.contains("show_progress_type") && text.contains("--preview-vae"),
        "{text}"
    );
    let other = post(
        server.addr,
        "/sdapi/v1/options",
        &json!({"show_progress_type": "Full"}),
    );
    assert!(String::from_utf8_lossy(&other.body).contains("Approx cheap and TAESD"));
    assert_eq!(
        get(server.addr, "/sdapi/v1/options").json()["show_progress_type"],
        "Approx cheap"
    );
}

#[test]
fn cancel_takes_a_queued_job_out_and_stops_a_running_one() {
    let (gate, hook) = Gate::new(|r| r.step == 1);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    config.queue_size = 1;
    let server = TestServer::start(config);
    let addr = server.addr;
    let running = id_of(&submit(addr, &small(1)));
    gate.wait();
    let queued = id_of(&submit(addr, &small(2)));
    let status = get(addr, &format!("/api/v1/jobs/{queued}")).json();
    assert_eq!(status["status"], "queued");
    assert_eq!(status["queue_position"], 0);
    // The queue is full now.
    let full = submit(addr, &small(3));
    assert_eq!(full.status, 429, "{}", String::from_utf8_lossy(&full.body));
    assert!(full.json()["detail"]
        .as_str()
        .unwrap()
        .contains("queue is full"));

    let cancel = post(addr, &format!("/api/v1/jobs/{queued}/cancel"), &json!({}));
    assert_eq!(cancel.status, 202);
    assert_eq!(cancel.json()["status"], "cancelled");
    // Its place is free again.
    let third = id_of(&submit(addr, &small(3)));

    let status = get(addr, &format!("/api/v1/jobs/{running}")).json();
    assert_eq!(status["status"], "running");
    assert_eq!(status["progress"]["step"], 1);
    let cancel = post(addr, &format!("/api/v1/jobs/{running}/cancel"), &json!({}));
    assert_eq!(cancel.status, 202);
    assert_eq!(cancel.json()["progress"]["cancelling"], true);
    gate.release();
    let status = wait_end(addr, running);
    assert_eq!(status["status"], "cancelled", "{status}");
    assert!(status["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    assert!(status.get("result").is_none());
    let again = post(addr, &format!("/api/v1/jobs/{running}/cancel"), &json!({}));
    assert_eq!(again.status, 409);
    assert!(again.json()["detail"]
        .as_str()
        .unwrap()
        .contains("already ended"));
    // The worker went on with the next job.
    assert_eq!(wait_end(addr, third)["status"], "succeeded");
}

#[test]
fn interrupt_keeps_the_estimate_as_the_result() {
    let (gate, hook) = Gate::new(|r| r.step == 2);
    let mut config = tiny_config();
    config.on_step = Some(hook);
    let server = TestServer::start(config);
    let addr = server.addr;
    let id = id_of(&submit(addr, &small(8)));
    gate.wait();
    let reply = post(addr, &format!("/api/v1/jobs/{id}/interrupt"), &json!({}));
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    gate.release();
    let status = wait_end(addr, id);
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["result"]["interrupted"], true);
    assert_eq!(status["result"]["images"].as_array().unwrap().len(), 1);
    let again = post(addr, &format!("/api/v1/jobs/{id}/interrupt"), &json!({}));
    assert_eq!(again.status, 409);
}

#[test]
fn results_expire_into_410_and_deleted_jobs_are_gone() {
    let mut config = tiny_config();
    config.result_ttl = Duration::from_secs(2);
    let server = TestServer::start(config);
    let addr = server.addr;
    let id = id_of(&submit(addr, &small(3)));
    let status = wait_end(addr, id);
    assert_eq!(status["status"], "succeeded");
    let expires = status["expires_at"].as_f64().unwrap() - status["finished_at"].as_f64().unwrap();
    assert!((expires - 2.0).abs() < 1e-6, "{status}");
    std::thread::sleep(Duration::from_millis(2100));
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/images/0"),
        format!("/api/v1/jobs/{id}/events"),
    ] {
        let reply = get(addr, &path);
        assert_eq!(reply.status, 410, "{path}");
        assert!(reply.json()["detail"].as_str().unwrap().contains("expired"));
    }

    let id = id_of(&submit(addr, &small(4)));
    wait_end(addr, id);
    let deleted = request(addr, "DELETE", &format!("/api/v1/jobs/{id}"), &[], b"");
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["deleted"], true);
    let reply = get(addr, &format!("/api/v1/jobs/{id}"));
    assert_eq!(reply.status, 410);
    assert!(reply.json()["detail"].as_str().unwrap().contains("deleted"));
    assert_eq!(get(addr, "/api/v1/jobs/99999").status, 404);
}

#[test]
fn bad_submits_get_a_4xx_naming_the_problem() {
    let server = TestServer::start(tiny_config());
    let addr = server.addr;
    let not_an_image = ImageData(b"hello".to_vec()).to_base64();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"prompt\": ".to_vec(), 422, "request"),
        (b"[1]".to_vec(), 422, "JSON object"),
        (br#"{"steps": "many"}"#.to_vec(), 422, "`steps`"),
        (br#"{"steps": 0}"#.to_vec(), 422, "`steps`"),
        (br#"{"width": 8192, "height": 64}"#.to_vec(), 422, "`width`"),
        (br#"{"batch_size": 0}"#.to_vec(), 422, "`batch_size`"),
        (br#"{"sampler": "warp drive"}"#.to_vec(), 422, "warp drive"),
        (br#"{"model": "no-such-model"}"#.to_vec(), 422, "`model`"),
        (br#"{"vae": "no-such-vae"}"#.to_vec(), 422, "`vae`"),
        (
            br#"{"loras": [{"name": "no-such-lora"}]}"#.to_vec(),
            422,
            "`loras[0].name`",
        ),
        (
            format!(r#"{{"init_image": "{not_an_image}", "width": 64, "height": 64}}"#)
                .into_bytes(),
            422,
            "`init_image`",
        ),
        (br#"{"init_image": "%%%"}"#.to_vec(), 422, "init_image"),
        (vec![0xff, 0xfe], 422, "UTF-8"),
    ];
    for (body, status, needle) in cases {
        let reply = post_raw(addr, "/api/v1/jobs", &body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        assert_eq!(
            reply.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let detail = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains(needle),
            "{shown}: `{needle}` not in {detail}"
        );
    }
    for path in [
        "/api/v1/jobs/abc",
        "/api/v1/jobs/abc/events",
        "/api/v1/jobs/1/images/x",
    ] {
        let reply = get(addr, path);
        assert_eq!(reply.status, 404, "{path}");
        reply.json();
    }
    assert_eq!(
        post(addr, "/api/v1/jobs/12345/cancel", &json!({})).status,
        404
    );
    // Nothing was queued by the refused submits.
    assert_eq!(get(addr, "/api/v1/jobs").json()["jobs"], json!([]));
}

//! `sd serve` as a process: it prints the address it listens on (port 0 picks a free one),
//! its txt2img images are `sd generate`'s PNGs pixel for pixel, infotext included, for the
//! same parameters (A1111's names on one side, the flags on the other; a batch, clip skip,
//! a combined sampler name, a hires pass), every request is logged, and SIGTERM ends it
//! cleanly with exit status 0.

mod common;

#[path = "../../sd-server/tests/common/http.rs"]
mod http;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Stdio};

use common::{assert_success, rgb, scratch, sd, sd_command, tiny_model};
use serde_json::json;
use stable_diffusion::image::{read_parameters, ImageData};

/// A running `sd serve`, killed if a test ends before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sd serve` on a free port, and the address it printed.
fn start_server() -> (Server, SocketAddr) {
    let mut child = sd_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(tiny_model())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sd serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .parse()
        .unwrap();
    (Server(child), addr)
}

/// The images of `sd generate` with `flags` (batch of `count`), and their infotexts.
fn generate(name: &str, flags: &[&str], count: usize) -> Vec<(image::RgbImage, String)> {
    let dir = scratch(name);
    let output = dir.join("out.png");
    let model = tiny_model();
    let mut args = vec!["generate", "--model", model.to_str().unwrap()];
    let output_text = output.display().to_string();
    args.extend(["--output", &output_text]);
    args.extend_from_slice(flags);
    let run = sd(&args);
    assert_success(&run, "sd generate");
    let files: Vec<_> = match count {
        1 => vec![output],
        n => (0..n).map(|i| dir.join(format!("out-{i}.png"))).collect(),
    };
    files
        .iter()
        .map(|f| (rgb(f), read_parameters(f).unwrap().unwrap()))
        .collect()
}

/// The reply's images decoded, with their infotexts.
fn served(addr: SocketAddr, body: &serde_json::Value) -> Vec<(image::RgbImage, String)> {
    let reply = http::post(addr, "/sdapi/v1/txt2img", body);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    let info: serde_json::Value = serde_json::from_str(reply["info"].as_str().unwrap()).unwrap();
    reply["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(info["infotexts"].as_array().unwrap())
        .map(|(image, text)| {
            let data = ImageData::from_base64(image.as_str().unwrap()).unwrap();
            let image = image::load_from_memory(&data.0).unwrap().to_rgb8();
            (image, text.as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn served_images_are_sd_generates_and_sigterm_ends_the_server_cleanly() {
    let (mut server, addr) = start_server();

    // A batch of two with clip skip, emphasis and a combined sampler name.
    let body = json!({
        "prompt": "a (red:1.2) circle",
        "negative_prompt": "blurry",
        "steps": 5,
        "seed": 42,
        "cfg_scale": 6.5,
        "sampler_name": "DPM++ 2M Karras",
        "width": 64,
        "height": 64,
        "batch_size": 2,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
        "some_field_we_do_not_know": {"x": 1},
        "subseed": null,
    });
    let flags = [
        "--prompt",
        "a (red:1.2) circle",
        "--negative-prompt",
        "blurry",
        "--steps",
        "5",
        "--seed",
        "42",
        "--cfg-scale",
        "6.5",
        "--sampler",
        "DPM++ 2M Karras",
        "--width",
        "64",
        "--height",
        "64",
        "--batch-size",
        "2",
        "--clip-skip",
        "2",
        "--rng",
        "cuda",
        "--prompt-syntax",
        "a1111",
    ];
    let from_server = served(addr, &body);
    let from_cli = generate("serve-batch", &flags, 2);
    assert_eq!(from_server.len(), 2);
    for (i, ((served, served_info), (made, made_info))) in
        from_server.iter().zip(&from_cli).enumerate()
    {
        assert_eq!(served_info, made_info, "infotext of image {i}");
        assert!(served == made, "pixels of image {i} differ");
    }

    // A hires pass with A1111's defaults (sampler Euler, the Latent upscaler).
    let body = json!({
        "prompt": "a green square",
        "steps": 3,
        "seed": 5,
        "width": 64,
        "height": 64,
        "enable_hr": true,
        "hr_scale": 1.5,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
    });
    let flags = [
        "--prompt",
        "a green square",
        "--steps",
        "3",
        "--seed",
        "5",
        "--cfg-scale",
        "7",
        "--sampler",
        "Euler",
        "--width",
        "64",
        "--height",
        "64",
        "--hires-scale",
        "1.5",
        "--hires-steps",
        "2",
        "--hires-strength",
        "0.5",
        "--hires-upscaler",
        "latent",
        "--rng",
        "cuda",
        "--prompt-syntax",
        "a1111",
    ];
    let from_server = served(addr, &body);
    let from_cli = generate("serve-hires", &flags, 1);
    assert_eq!(from_server[0].1, from_cli[0].1, "hires infotext");
    assert_eq!(from_server[0].0.dimensions(), (96, 96));
    assert!(from_server[0].0 == from_cli[0].0, "hires pixels differ");

    // SIGTERM: a graceful stop, exit status 0, every request logged.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.0.wait().unwrap();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "exit {exit:?}: {log}");
    assert!(log.contains("POST /sdapi/v1/txt2img 200"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn serve_refuses_bad_flags_with_exit_code_2() {
    let fixture = |rel: &str| common::fixtures().join(rel).display().to_string();
    let kl_vae = fixture("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    let taesd_encoder = fixture("taesd/taesd_encoder.safetensors");
    for (args, needle) in [
        (vec!["--api-auth", "nopassword"], "invalid --api-auth"),
        (vec!["--queue-size", "0"], "invalid --queue-size"),
        (vec!["--model", "/no/such/model"], "model not found"),
        (vec!["--max-body-size", "lots"], "invalid memory size"),
        (
            vec!["--preview-vae", "/no/such/taesd_decoder.safetensors"],
            "invalid --preview-vae",
        ),
        // The full VAE is not a tiny one; TAESD's encoder file cannot draw previews.
        (
            vec!["--preview-vae", kl_vae.as_str()],
            "not a TAESD / AutoencoderTiny file",
        ),
        (
            vec!["--preview-vae", taesd_encoder.as_str()],
            "holds only an encoder",
        ),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(&args);
        let output = sd(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

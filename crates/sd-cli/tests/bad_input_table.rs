//! Every kind of bad input that `sd` promises to refuse cleanly, run through the built binary:
//! each must exit with code 2 (the input's fault), with a message that names the problem, no
//! panic, no output file and no long wait. The answers are the README's table between the
//! `bad-input-table` markers; `SD_UPDATE_README=1 cargo test -p sd-cli --test
//! bad_input_table` rewrites it.
//!
//! The bad files are made here, in a scratch folder, from the fixtures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{fixtures, scratch, sd_command, tiny_model};

/// The README's markers around the table.
const START: &str = "<!-- bad-input-table:start -->";
const END: &str = "<!-- bad-input-table:end -->";

/// The longest a refusal may take (loading the tiny models included; a hang fails here).
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// One bad input: what it is, the `sd` arguments (and environment) that give it, and what
/// the message must contain.
struct Case {
    what: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    needle: String,
}

/// What `sd` answered to a case.
struct Answer {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

/// The repository's root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// The cases, with the files they need written under `dir`.
struct Cases {
    dir: PathBuf,
    cases: Vec<Case>,
}

impl Cases {
    /// `sd ARGS`.
    fn sd(&mut self, what: &str, args: &[&str], needle: &str) {
        self.cases.push(Case {
            what: what.to_string(),
            env: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            needle: needle.to_string(),
        });
    }

    /// `sd generate --model MODEL [--prompt x] [--steps 2] EXTRA` (the prompt and steps
    /// unless EXTRA gives them or a request; the output would be `output.png` in the scratch
    /// folder, where `sd` runs).
    fn generate(&mut self, what: &str, model: &Path, extra: &[&str], needle: &str) {
        let model = path_str(model);
        let mut args = vec!["generate", "--model", &model];
        let request = extra.contains(&"--request") || extra.contains(&"--from-png");
        if !request && !extra.contains(&"--prompt") {
            args.extend(["--prompt", "x"]);
        }
        if !request && !extra.contains(&"--steps") {
            args.extend(["--steps", "2"]);
        }
        args.extend_from_slice(extra);
        self.sd(what, &args, needle);
    }

    /// [`Cases::generate`] on the tiny SD 1.5 folder.
    fn tiny(&mut self, what: &str, extra: &[&str], needle: &str) {
        self.generate(what, &tiny_model(), extra, needle);
    }

    /// Writes `bytes` to `name` in the scratch folder and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A copy of the tiny SD 1.5 folder named `name`, with `file` (relative) replaced by
    /// `bytes`.
    fn tiny_copy(&self, name: &str, file: &str, bytes: &[u8]) -> PathBuf {
        let root = self.dir.join(name);
        copy_dir(&tiny_model(), &root);
        std::fs::write(root.join(file), bytes).unwrap();
        root
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A safetensors file of zero-filled F32 tensors `(name, shape)`.
fn safetensors(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let len = 4 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut bytes = header_bytes(&header);
    bytes.resize(bytes.len() + offset, 0);
    bytes
}

/// The 8-byte length and the JSON of a safetensors header, padded to 8 bytes.
fn header_bytes(header: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes
}

/// A safetensors file's header and data.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, &[u8]) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + len]).expect("a safetensors header");
    (header, &bytes[8 + len..])
}

/// CRC-32 (PNG's polynomial) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `width` x `height` 1-bit gray pixels, with a tiny (truncated)
/// image stream: a few bytes that would decode to gigabytes (as in the library's image
/// tests).
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]); // 1-bit grayscale, deflate, adaptive filter, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

/// A black PNG of `width` x `height`.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(width, height)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

/// Every case, in the README's order.
fn cases(dir: &Path) -> Vec<Case> {
    let mut c = Cases {
        dir: dir.to_path_buf(),
        cases: Vec::new(),
    };
    let tiny = tiny_model();
    let single = fixtures().join("single_file");

    // Models: missing, not a model, corrupt, hostile, of an unknown kind, not fitting.
    c.generate(
        "model path that does not exist",
        &dir.join("no-such-model"),
        &[],
        "no-such-model",
    );
    let notes = c.file("notes.txt", b"not a model");
    c.generate("model file of an unknown format", &notes, &[], "notes.txt");
    let empty = c.file("empty.safetensors", b"");
    c.generate("empty `.safetensors` file", &empty, &[], "too short");
    let mut not_json = 10u64.to_le_bytes().to_vec();
    not_json.extend(b"{not json}");
    let not_json = c.file("bad-json.safetensors", &not_json);
    c.generate(
        "`.safetensors` header that is not JSON",
        &not_json,
        &[],
        "bad-json.safetensors",
    );
    let mut too_long = (1u64 << 40).to_le_bytes().to_vec();
    too_long.extend(b"{}");
    let too_long = c.file("huge-header.safetensors", &too_long);
    c.generate(
        "`.safetensors` header size past the end of the file",
        &too_long,
        &[],
        "huge-header.safetensors",
    );
    let mut past = serde_json::Map::new();
    past.insert(
        "weight".into(),
        serde_json::json!({"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}),
    );
    let mut past = header_bytes(&past);
    past.extend([0; 16]);
    let past = c.file("past-end.safetensors", &past);
    c.generate(
        "`.safetensors` tensor offsets past the end of the file",
        &past,
        &[],
        "past-end.safetensors",
    );
    let whole = std::fs::read(single.join("tiny_sd2_text.safetensors")).unwrap();
    let truncated = c.file("truncated.safetensors", &whole[..whole.len() * 2 / 3]);
    c.generate(
        "truncated `.safetensors` checkpoint",
        &truncated,
        &[],
        "truncated.safetensors",
    );
    let unknown = c.file(
        "llm.safetensors",
        &safetensors(&[("model.layers.0.self_attn.q_proj.weight", &[4, 4])]),
    );
    c.generate(
        "checkpoint of an unknown model type",
        &unknown,
        &[],
        "llm.safetensors",
    );
    c.generate(
        "`.ckpt` whose pickle calls `os.system`",
        &single.join("malicious_os_system.ckpt"),
        &[],
        "refusing to load",
    );
    c.sd(
        "`.ckpt` whose pickle calls `eval` (`sd inspect`)",
        &["inspect", &path_str(&single.join("malicious_eval.ckpt"))],
        "refusing to load",
    );
    let nested = c.file(
        "nested.ckpt",
        &std::fs::read(repo().join("fuzz/regressions/ckpt/deep_nesting_legacy")).unwrap(),
    );
    c.generate(
        "`.ckpt` whose pickle nests lists 5000 deep",
        &nested,
        &[],
        "levels deep",
    );
    c.generate(
        "`.ckpt` tensor view past its storage",
        &single.join("bad_view.ckpt"),
        &[],
        "bad_view.ckpt",
    );
    c.generate(
        "single file whose tensors do not fit its family's full-size config",
        &single.join("tiny_sd15.safetensors"),
        &[],
        "shape",
    );
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let unet_bytes = std::fs::read(tiny.join(unet)).unwrap();
    let (mut header, data) = split_safetensors(&unet_bytes);
    let shape = header["conv_in.weight"]["shape"]
        .as_array()
        .unwrap()
        .clone();
    let mut swapped = shape.clone();
    swapped.swap(0, 1);
    assert_ne!(
        shape, swapped,
        "conv_in.weight's first two dimensions differ"
    );
    header["conv_in.weight"]["shape"] = serde_json::Value::Array(swapped);
    let mut wrong_shape = header_bytes(&header);
    wrong_shape.extend(data);
    let wrong_shape = c.tiny_copy("wrong-shape", unet, &wrong_shape);
    c.generate(
        "diffusers folder with a tensor of the wrong shape",
        &wrong_shape,
        &[],
        "conv_in.weight",
    );
    let broken = c.tiny_copy("broken-config", "unet/config.json", b"{\"in_channels\": 4,");
    c.generate(
        "broken `unet/config.json` (not JSON)",
        &broken,
        &[],
        "config.json",
    );
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny.join("unet/config.json")).unwrap()).unwrap();
    config["layers_per_block"] = serde_json::json!(1_000_000_000_000_000u64);
    let huge = c.tiny_copy(
        "huge-config",
        "unet/config.json",
        &serde_json::to_vec(&config).unwrap(),
    );
    c.generate(
        "`unet/config.json` asking for 10^15 layers per block",
        &huge,
        &[],
        "huge-config/unet/config.json: invalid config: `layers_per_block`",
    );
    let index = c.tiny_copy("broken-index", "model_index.json", b"not json");
    c.generate("broken `model_index.json`", &index, &[], "model_index.json");
    c.tiny(
        "VAE that does not exist",
        &["--vae", &path_str(&dir.join("no-such-vae"))],
        "VAE not found",
    );
    c.tiny(
        "VAE file that holds no VAE",
        &["--vae", &path_str(&unknown)],
        "not a VAE",
    );
    c.tiny("unknown `--family`", &["--family", "sd9"], "sdxl");
    c.tiny(
        "unknown `--weight-dtype`",
        &["--weight-dtype", "f8"],
        "bf16",
    );
    c.tiny("unknown `--device`", &["--device", "tpu"], "cpu");
    c.cases.push(Case {
        what: "unknown CPU kernel level".into(),
        env: vec![("SD_CPU_KERNELS".into(), "warp".into())],
        args: vec!["samplers".into()],
        needle: "warp".into(),
    });

    // Sizes and numbers.
    c.tiny(
        "width not a multiple of 8",
        &["--width", "65", "--height", "64"],
        "width",
    );
    c.tiny("width 0", &["--width", "0", "--height", "64"], "width");
    c.tiny(
        "size over the limit",
        &["--width", "8192", "--height", "64"],
        "limit",
    );
    c.tiny("0 steps", &["--steps", "0"], "steps");
    c.tiny("steps that are not a number", &["--steps", "many"], "many");
    c.tiny("strength 0", &["--strength", "0"], "strength");
    c.tiny("strength above 1", &["--strength", "1.5"], "strength");
    c.tiny(
        "hires scale of a million",
        &["--hires-scale", "1000000"],
        "above the limit",
    );
    c.tiny(
        "memory limit below the model's weights",
        &["--max-memory", "1M"],
        "limit of 1.0 MB",
    );
    c.tiny(
        "image too large for the memory limit",
        &["--max-memory", "20M", "--width", "4096", "--height", "4096"],
        "4096x4096 image",
    );
    c.tiny(
        "memory limit that is not a size",
        &["--max-memory", "lots"],
        "memory size",
    );
    c.tiny(
        "variation strength without a variation seed",
        &["--variation-strength", "0.5"],
        "--variation-seed",
    );
    c.tiny("unknown sampler", &["--sampler", "warp"], "euler_a");
    c.tiny("unknown schedule", &["--schedule", "warp"], "karras");
    c.tiny(
        "sampler and schedule that do not go together",
        &["--sampler", "ddim", "--schedule", "karras"],
        "karras",
    );
    c.generate(
        "refiner switch outside (0, 1)",
        &fixtures().join("models/tiny-sdxl"),
        &[
            "--refiner",
            &path_str(&fixtures().join("models/tiny-sdxl-refiner")),
            "--refiner-switch",
            "1.5",
        ],
        "refiner switch",
    );

    // Prompts, networks, embeddings.
    let deep = format!("{}x{}", "(".repeat(200), ")".repeat(200));
    c.tiny(
        "prompt nesting brackets 200 deep",
        &["--prompt-syntax", "a1111", "--prompt", &deep],
        "nest more than",
    );
    let long = "a ".repeat(40_000);
    c.tiny("prompt over 64 KB", &["--prompt", &long], "prompt");
    let lora_dir = path_str(&fixtures().join("lora"));
    c.tiny(
        "LoRA tag weight that is not a number",
        &[
            "--lora-dir",
            &lora_dir,
            "--prompt-syntax",
            "a1111",
            "--prompt",
            "a cat <lora:kohya:abc>",
        ],
        "abc",
    );
    c.tiny(
        "`--lora` weight that is not a number",
        &["--lora", &format!("{lora_dir}/kohya.safetensors:abc")],
        "abc",
    );
    c.tiny(
        "LoRA file that does not exist",
        &[
            "--lora",
            &format!("{}:0.5", path_str(&dir.join("no-such-lora.safetensors"))),
        ],
        "no-such-lora.safetensors",
    );
    // A kohya module of the fixture LoRA with an up matrix of another rank than its down.
    let kohya = std::fs::read(fixtures().join("lora/kohya.safetensors")).unwrap();
    let (header, _) = split_safetensors(&kohya);
    let down = header
        .keys()
        .find(|k| k.starts_with("lora_unet_") && k.ends_with(".lora_down.weight"))
        .expect("a kohya UNet module")
        .clone();
    let up = down.replace(".lora_down.", ".lora_up.");
    let dims = |key: &str| -> Vec<usize> {
        header[key]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    let (down_shape, mut up_shape) = (dims(&down), dims(&up));
    up_shape[1] += 2;
    let rank = c.file(
        "wrong-rank.safetensors",
        &safetensors(&[
            (down.as_str(), down_shape.as_slice()),
            (up.as_str(), up_shape.as_slice()),
        ]),
    );
    c.tiny(
        "LoRA whose up and down matrices differ in rank",
        &["--lora", &format!("{}:1", path_str(&rank))],
        "wrong-rank.safetensors",
    );
    let loha = c.file(
        "huge-loha.safetensors",
        &std::fs::read(repo().join("fuzz/regressions/lora/loha_huge_second_half")).unwrap(),
    );
    c.tiny(
        "LoHa whose factors multiply to 10^10 values",
        &["--lora", &format!("{}:1", path_str(&loha))],
        "does not fit",
    );
    c.tiny(
        "embedding file that does not exist",
        &["--embedding", &path_str(&dir.join("no-such-embedding.pt"))],
        "no-such-embedding.pt",
    );
    let bad_embedding = c.file(
        "cube.safetensors",
        &safetensors(&[("emb_params", &[1, 2, 3])]),
    );
    c.tiny(
        "embedding whose tensor is not (vectors, width)",
        &["--embedding", &path_str(&bad_embedding)],
        "emb_params",
    );

    // Images.
    c.tiny(
        "init image that does not exist",
        &["--init-image", &path_str(&dir.join("no-such-image.png"))],
        "no-such-image.png",
    );
    let not_png = c.file("not-an-image.png", b"not a png at all");
    c.tiny(
        "init image that is not an image",
        &["--init-image", &path_str(&not_png)],
        "not-an-image.png",
    );
    let bomb = c.file("bomb.png", &bomb_png(22000, 22000));
    c.tiny(
        "decompression-bomb PNG (22000x22000 in 70 bytes) as init image",
        &["--init-image", &path_str(&bomb)],
        "megapixels",
    );
    let init = c.file("init.png", &png(64, 64));
    let small = c.file("small-mask.png", &png(32, 32));
    c.generate(
        "mask of another size than the init image",
        &fixtures().join("models/tiny-sd15-inpaint"),
        &[
            "--init-image",
            &path_str(&init),
            "--mask",
            &path_str(&small),
        ],
        "mask is 32x32",
    );
    c.tiny(
        "mask without an init image",
        &["--mask", &path_str(&small)],
        "init image",
    );
    c.sd(
        "`sd info` on a file that is not a PNG",
        &["info", &path_str(&notes)],
        "notes.txt",
    );
    c.sd(
        "`sd info` on a PNG without parameters",
        &["info", &path_str(&init)],
        "no generation parameters",
    );
    c.tiny(
        "`--from-png` of a file that is not a PNG",
        &["--from-png", &path_str(&notes)],
        "notes.txt",
    );

    // Requests.
    let typed = c.file("steps-many.json", br#"{"prompt": "x", "steps": "many"}"#);
    c.tiny(
        "`--request` with a field of the wrong type",
        &["--request", &path_str(&typed)],
        "steps",
    );
    let truncated_json = c.file("truncated.json", br#"{"prompt": "x", "#);
    c.tiny(
        "`--request` that is not JSON",
        &["--request", &path_str(&truncated_json)],
        "truncated.json",
    );
    let sampler = c.file(
        "sampler.json",
        br#"{"prompt": "x", "sampler": "warp drive"}"#,
    );
    c.tiny(
        "`--request` with an unknown sampler",
        &["--request", &path_str(&sampler)],
        "warp drive",
    );
    c.tiny(
        "`--request` file that does not exist",
        &["--request", &path_str(&dir.join("no-such-request.json"))],
        "no-such-request.json",
    );

    // Outputs and folders.
    let folder = dir.join("a-folder.png");
    std::fs::create_dir_all(&folder).unwrap();
    c.tiny(
        "output path that is a folder",
        &["--output", &path_str(&folder)],
        "folder",
    );
    c.tiny(
        "output folder that does not exist",
        &["--output", &path_str(&dir.join("no-such-folder/out.png"))],
        "output folder",
    );
    c.sd(
        "`sd inspect` of a path that does not exist",
        &["inspect", &path_str(&dir.join("no-such-model.safetensors"))],
        "no-such-model.safetensors",
    );
    c.sd(
        "`sd models` of a folder that does not exist",
        &[
            "models",
            "--models-dir",
            &path_str(&dir.join("no-such-dir")),
        ],
        "no-such-dir",
    );
    c.cases
}

/// Runs `case` in `dir`, killing it after [`TIME_LIMIT`].
fn answer(dir: &Path, case: &Case) -> Answer {
    let stdout = std::fs::File::create(dir.join("stdout.txt")).unwrap();
    let stderr_path = dir.join("stderr.txt");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let start = Instant::now();
    let mut child = sd_command()
        .args(&case.args)
        .envs(case.env.iter().map(|(k, v)| (k, v)))
        .env("SD_CACHE_DIR", dir.join("cache"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("sd starts");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Answer {
        code: status.and_then(|s| s.code()),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
        elapsed: start.elapsed(),
    }
}

/// `text` with the scratch folder written `<tmp>` and the repository's paths relative.
fn normalize(text: &str, dir: &Path) -> String {
    let mut text = text.to_string();
    let mut prefixes = vec![(path_str(dir), "<tmp>".to_string())];
    if let Ok(canonical) = dir.canonicalize() {
        prefixes.push((path_str(&canonical), "<tmp>".to_string()));
    }
    prefixes.push((format!("{}/", path_str(&repo())), String::new()));
    if let Ok(canonical) = repo().canonicalize() {
        prefixes.push((format!("{}/", path_str(&canonical)), String::new()));
    }
    for (from, to) in prefixes {
        text = text.replace(&from, &to);
    }
    text
}

/// An argument as the table shows it: quoted when it has spaces or shell characters, and
/// shortened when long.
fn shown_arg(arg: &str) -> String {
    let count = arg.chars().count();
    let arg = if count > 60 {
        let head: String = arg.chars().take(12).collect();
        format!("{head}…({count} chars)")
    } else {
        arg.to_string()
    };
    if arg.contains(|c: char| " <>()[]|&;'\"*?$".contains(c)) {
        format!("\"{arg}\"")
    } else {
        arg
    }
}

/// The line of stderr that says what is wrong (the `error:` line, else the first), trimmed
/// to about 100 characters.
fn message(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    if line.chars().count() > 100 {
        let head: String = line.chars().take(99).collect();
        format!("{}…", head.trim_end())
    } else {
        line.to_string()
    }
}

/// A markdown table cell holding `text` as code.
fn code_cell(text: &str) -> String {
    format!("`` {} ``", text.replace('|', "\\|"))
}

fn table(rows: &[(String, String, Option<i32>, String)]) -> String {
    let mut out =
        String::from("| bad input | command | exit code | message (first line of stderr) |\n");
    out.push_str("|---|---|---|---|\n");
    for (what, command, code, message) in rows {
        let code = code.map_or("killed".to_string(), |c| c.to_string());
        out.push_str(&format!(
            "| {} | {} | {code} | {} |\n",
            what.replace('|', "\\|"),
            code_cell(command),
            code_cell(message)
        ));
    }
    out
}

/// `readme` with the text between the markers replaced by `table`.
fn with_table(readme: &str, table: &str) -> String {
    let start = readme.find(START).expect("README has the start marker") + START.len();
    let end = readme.find(END).expect("README has the end marker");
    assert!(start <= end, "the README's markers are out of order");
    format!("{}\n{table}{}", &readme[..start], &readme[end..])
}

#[test]
fn every_kind_of_bad_input_exits_2_with_a_clear_message_as_the_readme_shows() {
    let dir = scratch("bad-input");
    let cases = cases(&dir);
    let output = dir.join("output.png");
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let total = Instant::now();
    for case in &cases {
        let answer = answer(&dir, case);
        let stderr = normalize(&answer.stderr, &dir);
        let mut command: Vec<String> = case.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        command.push("sd".into());
        command.extend(case.args.iter().map(|a| shown_arg(&normalize(a, &dir))));
        let command = command.join(" ");
        println!(
            "{:>6} ms  {}: {command}",
            answer.elapsed.as_millis(),
            case.what
        );
        let mut problems = Vec::new();
        if answer.code != Some(2) {
            problems.push(format!("exit code {:?}, not 2", answer.code));
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            problems.push("a panic".to_string());
        }
        if !stderr.contains(&case.needle) {
            problems.push(format!("no {:?} in the message", case.needle));
        }
        if answer.elapsed > TIME_LIMIT {
            problems.push(format!("took over {} s", TIME_LIMIT.as_secs()));
        }
        if output.exists() {
            problems.push("wrote output.png".to_string());
            let _ = std::fs::remove_file(&output);
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({command}): {}\n  stderr: {stderr}",
                case.what,
                problems.join("; ")
            ));
        }
        rows.push((case.what.clone(), command, answer.code, message(&stderr)));
    }
    println!(
        "{} cases in {:.1} s",
        cases.len(),
        total.elapsed().as_secs_f64()
    );
    let table = table(&rows);
    println!("{table}");

    let readme_path = repo().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let updated = with_table(&readme, &table);
    let stale = updated != readme;
    if stale && std::env::var_os("SD_UPDATE_README").is_some() {
        std::fs::write(&readme_path, &updated).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        !stale || std::env::var_os("SD_UPDATE_README").is_some(),
        "the README's bad-input table differs from what `sd` answers now; rerun with \
         SD_UPDATE_README=1 (SD_UPDATE_README=1 cargo test --release -p sd-cli --test \
         bad_input_table) to rewrite it, and check the diff. The table now:\n{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_table_escapes_pipes_and_keeps_paths_out() {
    let dir = Path::new("/tmp/sd-cli-1-x");
    assert_eq!(
        normalize("error: /tmp/sd-cli-1-x/a.png: bad", dir),
        "error: <tmp>/a.png: bad"
    );
    let fixture = path_str(&fixtures().join("lora"));
    assert_eq!(normalize(&fixture, dir), "fixtures/lora");
    assert_eq!(shown_arg("a cat"), "\"a cat\"");
    assert_eq!(shown_arg(&"(".repeat(70)), "\"((((((((((((…(70 chars)\"");
    let long = format!("error: {}", "x".repeat(200));
    assert_eq!(message(&long).chars().count(), 100);
    assert_eq!(message("warning: w\nerror: e\n"), "error: e");
    let t = table(&[("a | b".into(), "sd x".into(), Some(2), "m|n".into())]);
    assert!(
        t.contains("| a \\| b | `` sd x `` | 2 | `` m\\|n `` |"),
        "{t}"
    );
    let readme = format!("intro\n{START}\nold\n{END}\nrest");
    assert_eq!(
        with_table(&readme, "new\n"),
        format!("intro\n{START}\nnew\n{END}\nrest")
    );
}

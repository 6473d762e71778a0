//! `sd inspect PATH`: what a checkpoint (single file or diffusers folder) is, as detected at
//! load time, and how well its tensors fit the models: parameter counts, stored dtypes,
//! missing and unused tensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Value};
use stable_diffusion::loading::{report_folder, DiffusersFolder, LoadReport, SingleFileCheckpoint};
use stable_diffusion::model_family::{prediction_name, DetectOptions, ModelDescription};

use crate::UsageError;

/// Arguments of `sd inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A single-file checkpoint (`.safetensors`, `.ckpt`) or a diffusers model folder.
    pub path: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Use this model family instead of the detected one (sd1, sd2, sdxl, sdxl-refiner).
    #[arg(long)]
    pub family: Option<String>,
    /// Use this prediction type instead of the detected one (epsilon, v_prediction).
    #[arg(long)]
    pub prediction_type: Option<String>,
    /// List every missing and unused tensor (by default the first 10 of each list).
    #[arg(long)]
    pub all: bool,
}

/// What was found, ready to print.
struct Inspection {
    kind: &'static str,
    description: ModelDescription,
    prediction_reason: String,
    report: LoadReport,
}

/// Runs `sd inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    if !args.path.exists() {
        return Err(UsageError(format!("not found: {}", args.path.display())).into());
    }
    let options = DetectOptions {
        family: args
            .family
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| UsageError(format!("--family: {e}")))?,
        prediction: args
            .prediction_type
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| UsageError(format!("--prediction-type: {e}")))?,
    };
    let inspection = if args.path.is_dir() {
        let folder = DiffusersFolder::open(&args.path)?;
        let description = ModelDescription::from_folder(&folder, &options)?;
        let report = report_folder(&folder, &description)?;
        let reason = match options.prediction {
            Some(_) => "given by the user".to_string(),
            None => "from scheduler/scheduler_config.json".to_string(),
        };
        Inspection {
            kind: "diffusers folder",
            description,
            prediction_reason: reason,
            report,
        }
    } else {
        let checkpoint = SingleFileCheckpoint::open_with(&args.path, &options)?;
        Inspection {
            kind: "single-file checkpoint",
            description: checkpoint.describe().clone(),
            prediction_reason: checkpoint.prediction_reason().to_string(),
            report: checkpoint.report()?,
        }
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args, &inspection))?
        );
    } else {
        print_text(&args, &inspection)?;
    }
    Ok(())
}

fn to_json(args: &InspectArgs, inspection: &Inspection) -> Value {
    let d = &inspection.description;
    let report = &inspection.report;
    let components: Vec<Value> = report
        .components
        .iter()
        .map(|c| {
            let text = d.text_encoder(&c.component);
            json!({
                "component": c.component,
                "parameters": c.parameters,
                "tensors": c.tensors,
                "missing": c.missing,
                "mismatched": c.mismatched.iter().map(|(name, expected, found)| json!({
                    "name": name, "expected": expected, "found": found,
                })).collect::<Vec<_>>(),
                "class": text.map(|t| t.class.clone()),
                "layers": text.map(|t| t.config.num_hidden_layers),
                "stored_layers": text.and_then(|t| t.stored_layers),
            })
        })
        .collect();
    json!({
        "path": args.path.display().to_string(),
        "kind": inspection.kind,
        "family": d.family.id(),
        "family_name": d.family.name(),
        "prediction_type": prediction_name(d.prediction),
        "prediction_reason": inspection.prediction_reason,
        "inpainting": d.inpainting,
        "native_size": d.native_size(),
        "dtypes": report.dtypes,
        "complete": report.is_complete(),
        "components": components,
        "known_unused": report.known_unused.iter().map(|(name, reason)| json!({
            "name": name, "reason": reason,
        })).collect::<Vec<_>>(),
        "unused": report.unused,
        "non_tensor_entries": report.non_tensor_entries,
    })
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

fn print_list(title: &str, items: &[String], all: bool) -> std::io::Result<()> {
    if items.is_empty() {
        outln!("{title}: none");
        return Ok(());
    }
    outln!("{title}: {}", items.len());
    let shown = if all {
        items.len()
    } else {
        items.len().min(10)
    };
    for item in &items[..shown] {
        outln!("  {item}");
    }
    if shown < items.len() {
        outln!("  ... {} more (--all lists them)", items.len() - shown);
    }
    Ok(())
}

fn print_text(args: &InspectArgs, inspection: &Inspection) -> std::io::Result<()> {
    let d = &inspection.description;
    let report = &inspection.report;
    outln!(
        "path:         {} ({})",
        args.path.display(),
        inspection.kind
    );
    outln!("family:       {} ({})", d.family.name(), d.family.id());
    outln!(
        "prediction:   {} ({})",
        prediction_name(d.prediction),
        inspection.prediction_reason
    );
    outln!(
        "inpainting:   {}",
        if d.inpainting {
            "yes (9-channel UNet)"
        } else {
            "no"
        }
    );
    outln!("native size:  {0}x{0}", d.native_size());
    let dtypes: Vec<String> = report
        .dtypes
        .iter()
        .map(|(dtype, count)| format!("{dtype} ({count} tensors)"))
        .collect();
    outln!("stored dtype: {}", dtypes.join(", "));
    if report.non_tensor_entries > 0 {
        outln!("non-tensor entries skipped: {}", report.non_tensor_entries);
    }
    outln!("components:");
    let mut total = 0;
    for c in &report.components {
        total += c.parameters;
        let status = if c.missing.is_empty() && c.mismatched.is_empty() {
            "complete".to_string()
        } else {
            format!(
                "{} missing, {} misshaped",
                c.missing.len(),
                c.mismatched.len()
            )
        };
        let layers = match d.text_encoder(&c.component) {
            Some(t) => match t.stored_layers {
                Some(stored) => format!(
                    "  [{}, {} layers used; the file holds {stored}]",
                    t.class, t.config.num_hidden_layers
                ),
                None => format!("  [{}, {} layers]", t.class, t.config.num_hidden_layers),
            },
            None => String::new(),
        };
        outln!(
            "  {:<15} {:>12} parameters {:>6} tensors  {status}{layers}",
            c.component,
            millions(c.parameters),
            c.tensors
        );
    }
    outln!("  {:<15} {:>12} parameters", "total", millions(total));
    let missing: Vec<String> = report
        .components
        .iter()
        .flat_map(|c| {
            c.missing
                .iter()
                .map(move |n| format!("{}: {n}", c.component))
        })
        .collect();
    print_list("missing tensors", &missing, args.all)?;
    let mismatched: Vec<String> = report
        .components
        .iter()
        .flat_map(|c| {
            c.mismatched.iter().map(move |(n, want, found)| {
                format!("{}: {n}: expected {want:?}, found {found:?}", c.component)
            })
        })
        .collect();
    print_list("misshaped tensors", &mismatched, args.all)?;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in &report.known_unused {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    if report.known_unused.is_empty() {
        outln!("known unused tensors: none");
    } else {
        outln!("known unused tensors: {}", report.known_unused.len());
        for (reason, count) in &reasons {
            outln!("  {count} x {reason}");
        }
    }
    print_list("unused tensors", &report.unused, args.all)
}

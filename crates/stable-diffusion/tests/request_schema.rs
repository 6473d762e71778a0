//! The request's JSON Schema: it lists every field the request serializes (nested objects
//! too), with the request's defaults and a description, and the README's table of JSON fields
//! names exactly the same fields.

use std::collections::BTreeSet;

use serde_json::Value;
use stable_diffusion::pipeline::{GenerationRequest, HiresFix, NetworkRef};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{SamplerKind, SamplerOptions, SigmaSchedule};

fn schema() -> Value {
    GenerationRequest::json_schema()
}

/// The schema of a `$defs` entry (the nested objects and named enums).
fn definition<'a>(schema: &'a Value, name: &str) -> &'a Value {
    schema["$defs"]
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` in the schema's $defs"))
}

fn property_names(object_schema: &Value) -> BTreeSet<String> {
    object_schema["properties"]
        .as_object()
        .expect("an object schema has properties")
        .keys()
        .cloned()
        .collect()
}

/// The keys a value serializes with (every field: none is skipped).
fn serialized_keys(value: impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_schema_lists_every_request_field_with_its_default_and_a_description() {
    let schema = schema();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{schema:#}"
    );
    assert_eq!(schema["type"], "object");
    assert_eq!(
        property_names(&schema),
        serialized_keys(GenerationRequest::default())
    );
    let defaults = serde_json::to_value(GenerationRequest::default()).unwrap();
    for (name, property) in schema["properties"].as_object().unwrap() {
        assert_eq!(
            property.get("default"),
            Some(&defaults[name]),
            "the schema's default of `{name}` is not the request's"
        );
        let described = property["description"].as_str().unwrap_or("");
        assert!(!described.is_empty(), "`{name}` has no description");
    }
    for (definition_name, keys) in [
        ("SamplerOptions", serialized_keys(SamplerOptions::default())),
        ("HiresFix", serialized_keys(HiresFix::default())),
        ("NetworkRef", serialized_keys(NetworkRef::default())),
    ] {
        assert_eq!(
            property_names(definition(&schema, definition_name)),
            keys,
            "{definition_name}"
        );
    }
}

#[test]
fn named_enums_are_strings_whose_examples_parse() {
    let schema = schema();
    let examples = |name: &str| -> Vec<String> {
        let def = definition(&schema, name);
        assert_eq!(def["type"], "string", "{name}");
        def["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no examples"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let samplers = examples("SamplerKind");
    assert_eq!(samplers.len(), SamplerKind::ALL.len());
    for name in &samplers {
        assert_eq!(name.parse::<SamplerKind>().unwrap().name(), name);
    }
    let schedules = examples("SigmaSchedule");
    assert_eq!(schedules.len(), SigmaSchedule::ALL.len());
    for name in &schedules {
        assert_eq!(name.parse::<SigmaSchedule>().unwrap().name(), name);
    }
    assert_eq!(examples("PromptSyntax"), PromptSyntax::NAMES);
    for name in ["RngKind", "HiresUpscaler", "SamplerFlavor"] {
        assert!(examples(name).len() >= 2, "{name}");
    }
    // A field of a named type points at its definition.
    assert_eq!(
        schema["properties"]["sampler"]["$ref"],
        "#/$defs/SamplerKind"
    );
}

/// The README's JSON-fields table: (first column, second column) of each row.
fn readme_field_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "| field | meaning (default) |");
    assert!(lines.next().is_some(), "README has no JSON-fields table");
    lines
        .skip(1) // |---|---|
        .map(str::trim)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').splitn(2, " | ").collect();
            (cells[0].trim().to_string(), cells[1].trim().to_string())
        })
        .collect()
}

/// The `code` spans of `text`, leaving out those inside parentheses (examples, defaults).
fn code_spans_outside_parentheses(text: &str) -> BTreeSet<String> {
    let mut depth = 0usize;
    let mut outside = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `"key":` names of the JSON example in `text`.
fn json_keys(text: &str) -> BTreeSet<String> {
    text.split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].starts_with(':'))
        .map(|w| w[0].to_string())
        .collect()
}

#[test]
fn the_readme_documents_exactly_the_schemas_fields() {
    let schema = schema();
    let rows = readme_field_rows();
    let documented: BTreeSet<String> = rows
        .iter()
        .flat_map(|(fields, _)| code_spans_outside_parentheses(fields))
        .collect();
    assert_eq!(
        documented,
        property_names(&schema),
        "README's JSON-fields table against the request's fields"
    );
    let meaning = |field: &str| -> &str {
        &rows
            .iter()
            .find(|(fields, _)| code_spans_outside_parentheses(fields).contains(field))
            .unwrap()
            .1
    };
    assert_eq!(
        code_spans_outside_parentheses(meaning("sampler_options")),
        property_names(definition(&schema, "SamplerOptions")),
        "README's `sampler_options` row"
    );
    assert_eq!(
        json_keys(meaning("hires")),
        property_names(definition(&schema, "HiresFix")),
        "README's `hires` row"
    );
    assert_eq!(
        json_keys(meaning("loras")),
        property_names(definition(&schema, "NetworkRef")),
        "README's `loras` row"
    );
}

//! Serde for the enums that have names (samplers, schedules, ...): each is written as its
//! `name()` and read through its `FromStr`, so JSON takes the same names as the command line.
//! Their JSON Schema is a string with those names as examples: the parsers also take other
//! spellings (A1111's labels, any case, a sampler with its schedule), so the names are not a
//! closed list.

/// Implements `Serialize` (as `name()`), `Deserialize` (through `FromStr`) and `JsonSchema`
/// (a string, `$names` its examples) for `$ty`.
macro_rules! serde_by_name {
    ($($ty:ty => $names:expr),+ $(,)?) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                let path = stringify!($ty);
                path.rsplit("::").next().unwrap_or(path).to_string().into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let names: Vec<&'static str> = $names;
                schemars::json_schema!({ "type": "string", "examples": names })
            }
        }
    )+};
}

pub(crate) use serde_by_name;

crate::names::serde_by_name!(
    crate::scheduler::SamplerKind => crate::scheduler::SamplerKind::ALL.iter().map(|k| k.name()).collect(),
    crate::scheduler::SamplerFlavor => vec!["diffusers", "k-diffusion"],
    crate::scheduler::SigmaSchedule => crate::scheduler::SigmaSchedule::ALL.iter().map(|k| k.name()).collect(),
    crate::prompt::PromptSyntax => crate::prompt::PromptSyntax::NAMES.to_vec(),
    crate::pipeline::RngKind => crate::pipeline::RngKind::NAMES.to_vec(),
    crate::pipeline::HiresUpscaler => crate::pipeline::HiresUpscaler::NAMES.to_vec(),
);

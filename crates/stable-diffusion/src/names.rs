//! Serde for the enums that have names (samplers, schedules, ...): each is written as its
//! `name()` and read through its `FromStr`, so JSON takes the same names as the command line.

/// Implements `Serialize` (as `name()`) and `Deserialize` (through `FromStr`) for `$ty`.
macro_rules! serde_by_name {
    ($($ty:ty),+ $(,)?) => {$(
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
    )+};
}

pub(crate) use serde_by_name;

crate::names::serde_by_name!(
    crate::scheduler::SamplerKind,
    crate::scheduler::SamplerFlavor,
    crate::scheduler::SigmaSchedule,
    crate::prompt::PromptSyntax,
    crate::pipeline::RngKind,
    crate::pipeline::HiresUpscaler,
);

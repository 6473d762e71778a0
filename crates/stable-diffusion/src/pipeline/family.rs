//! What kind of model was loaded: the family, re-exported here; everything else about a loaded
//! model is its [`ModelDescription`](crate::model_family::ModelDescription).

pub use crate::model_family::ModelFamily;

//! The OpenAPI description of the server, made where the routes are made: every route is
//! registered through [`Routes::route`] with its [`Op`]s (summary, body and reply types), so
//! no route exists without its description. Schemas come from the Rust types with schemars
//! (OpenAPI 3.0 settings); `/openapi.json` serves the document and `/docs` a page that
//! renders it (no CDN: the page is embedded in the binary).

use axum::routing::MethodRouter;
use axum::Router;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Makes the schema of a type in a generator (its definitions collected there).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, a reference into the components when `T` is named.
fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a reply carries.
#[derive(Clone, Copy)]
enum Content {
    /// JSON of a known type.
    Json(SchemaFn),
    /// Some JSON value.
    AnyJson,
    /// A PNG file.
    Png,
    /// Server-Sent Events.
    Events,
    /// An HTML page.
    Html,
}

/// One documented operation: a method on a path.
#[derive(Clone)]
pub struct Op {
    method: &'static str,
    summary: &'static str,
    description: &'static str,
    body: Option<SchemaFn>,
    replies: Vec<(u16, &'static str, Content)>,
    query: Vec<(&'static str, &'static str, SchemaFn)>,
}

impl Op {
    fn new(method: &'static str, summary: &'static str) -> Self {
        Self {
            method,
            summary,
            description: "",
            body: None,
            replies: Vec::new(),
            query: Vec::new(),
        }
    }

    /// A GET operation.
    pub fn get(summary: &'static str) -> Self {
        Self::new("get", summary)
    }

    /// A POST operation.
    pub fn post(summary: &'static str) -> Self {
        Self::new("post", summary)
    }

    /// A DELETE operation.
    pub fn delete(summary: &'static str) -> Self {
        Self::new("delete", summary)
    }

    /// A longer description.
    pub fn describe(mut self, text: &'static str) -> Self {
        self.description = text;
        self
    }

    /// The JSON body is a `T`.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some(schema_of::<T>);
        self
    }

    /// A JSON reply of type `T` with `status`.
    pub fn reply<T: JsonSchema>(mut self, status: u16, what: &'static str) -> Self {
        self.replies
            .push((status, what, Content::Json(schema_of::<T>)));
        self
    }

    /// A JSON reply of no fixed shape with `status`.
    pub fn reply_json(mut self, status: u16, what: &'static str) -> Self {
        self.replies.push((status, what, Content::AnyJson));
        self
    }

    /// A PNG reply.
    pub fn reply_png(mut self, what: &'static str) -> Self {
        self.replies.push((200, what, Content::Png));
        self
    }

    /// An event-stream reply.
    pub fn reply_events(mut self, what: &'static str) -> Self {
        self.replies.push((200, what, Content::Events));
        self
    }

    /// An HTML page reply.
    pub fn reply_html(mut self, what: &'static str) -> Self {
        self.replies.push((200, what, Content::Html));
        self
    }

    /// A query parameter of type `T`.
    pub fn query<T: JsonSchema>(mut self, name: &'static str, what: &'static str) -> Self {
        self.query.push((name, what, schema_of::<T>));
        self
    }
}

/// A documented operation at its full path, under a tag.
#[derive(Clone)]
pub struct Documented {
    path: String,
    tag: &'static str,
    op: Op,
}

impl Documented {
    /// `op` at `path` under `tag`, for a route added to a router by other means.
    pub fn new(path: &str, tag: &'static str, op: Op) -> Self {
        Self {
            path: path.to_string(),
            tag,
            op,
        }
    }
}

/// A router and the description of its routes, built together.
pub struct Routes<S> {
    router: Router<S>,
    prefix: &'static str,
    tag: &'static str,
    docs: Vec<Documented>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Routes that will be served under `prefix`, described under `tag`.
    pub fn new(prefix: &'static str, tag: &'static str) -> Self {
        Self {
            router: Router::new(),
            prefix,
            tag,
            docs: Vec::new(),
        }
    }

    /// Adds `handler` at `path` (axum's syntax, `{id}` for a parameter), described by `ops`
    /// (one per method it answers).
    pub fn route(
        mut self,
        path: &str,
        handler: MethodRouter<S>,
        ops: impl IntoIterator<Item = Op>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        for op in ops {
            self.docs.push(Documented {
                path: format!("{}{path}", self.prefix),
                tag: self.tag,
                op,
            });
        }
        self
    }

    /// The router (to nest under the prefix) and the descriptions.
    pub fn into_parts(self) -> (Router<S>, Vec<Documented>) {
        (self.router, self.docs)
    }
}

/// The error body every route answers a failure with (A1111's shape).
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The kind of error (`HTTPException`, `RequestValidationError`, ...).
    error: String,
    /// What is wrong, naming the field or value.
    detail: String,
    /// Empty (A1111 echoes the body here).
    body: String,
    /// The same as `detail`.
    errors: String,
}

/// The parameters of a path: each `{name}` segment, a whole number.
fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "integer", "format": "int64", "minimum": 0},
            })
        })
        .collect()
}

/// The OpenAPI 3.0 document of `docs`; `basic_auth` adds HTTP Basic security to every
/// operation.
pub fn document(docs: &[Documented], basic_auth: bool) -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let error = schema_of::<ErrorBody>(&mut generator);
    let mut paths = Map::new();
    for doc in docs {
        let op = &doc.op;
        let mut operation = json!({
            "tags": [doc.tag],
            "summary": op.summary,
            "operationId": operation_id(op.method, &doc.path),
        });
        if !op.description.is_empty() {
            operation["description"] = json!(op.description);
        }
        let mut parameters = path_parameters(&doc.path);
        for (name, what, schema) in &op.query {
            parameters.push(json!({
                "name": name,
                "in": "query",
                "required": false,
                "description": what,
                "schema": schema(&mut generator),
            }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut generator)}},
            });
        }
        let mut responses = Map::new();
        for (status, what, content) in &op.replies {
            let content = match content {
                Content::Json(schema) => {
                    json!({"application/json": {"schema": schema(&mut generator)}})
                }
                Content::AnyJson => json!({"application/json": {"schema": {}}}),
                Content::Png => {
                    json!({"image/png": {"schema": {"type": "string", "format": "binary"}}})
                }
                Content::Events => json!({"text/event-stream": {"schema": {"type": "string"}}}),
                Content::Html => json!({"text/html": {"schema": {"type": "string"}}}),
            };
            responses.insert(
                status.to_string(),
                json!({"description": what, "content": content}),
            );
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "an error: 4xx for the request's faults, naming the field",
                "content": {"application/json": {"schema": error}},
            }),
        );
        operation["responses"] = Value::Object(responses);
        if basic_auth {
            operation["security"] = json!([{"basic": []}]);
        }
        let entry = paths
            .entry(doc.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[op.method] = operation;
    }
    let mut components = json!({"schemas": generator.take_definitions(true)});
    if basic_auth {
        components["securitySchemes"] = json!({"basic": {"type": "http", "scheme": "basic"}});
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "sd serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Stable Diffusion in Rust: AUTOMATIC1111's web API under /sdapi/v1 \
                and a native job API under /api/v1, one worker behind a bounded queue.",
        },
        "paths": paths,
        "components": components,
    })
}

/// A unique operation id: the method and the path's words (`post_api_v1_jobs_id_cancel`).
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<String> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    format!("{method}_{}", words.join("_"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Thing {
        /// A number.
        count: u32,
    }

    #[test]
    fn every_route_is_described_with_its_schemas_and_parameters() {
        let (_, docs) = Routes::<()>::new("/api", "test")
            .route(
                "/things/{id}",
                get(|| async {}).post(|| async {}),
                [
                    Op::get("read a thing").reply::<Thing>(200, "the thing"),
                    Op::post("change a thing").body::<Thing>(),
                ],
            )
            .into_parts();
        let doc = document(&docs, true);
        let path = &doc["paths"]["/api/things/{id}"];
        assert_eq!(path["get"]["summary"], "read a thing");
        assert_eq!(path["get"]["parameters"][0]["name"], "id");
        assert_eq!(
            path["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );
        assert_eq!(path["post"]["operationId"], "post_api_things_id");
        assert!(path["post"]["requestBody"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["Thing"]["properties"]["count"]["description"],
            "A number."
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert_eq!(path["get"]["security"][0]["basic"], json!([]));
    }
}

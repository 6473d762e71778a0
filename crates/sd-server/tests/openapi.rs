//! `/openapi.json` describes the routes the server answers, with the request types' schemas;
//! `/docs` is a page that renders it and `/` the web page, both without outside assets.

mod common;

use common::http::get;
use common::{tiny_config, TestServer};

#[test]
fn the_openapi_document_describes_the_routes_that_answer() {
    let server = TestServer::start(tiny_config());
    let addr = server.addr;
    let reply = get(addr, "/openapi.json");
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let txt2img = &paths["/sdapi/v1/txt2img"]["post"];
    assert_eq!(
        txt2img["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Body"
    );
    let submit = &paths["/api/v1/jobs"]["post"];
    assert_eq!(
        submit["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/GenerationRequest"
    );
    assert!(submit["responses"]["202"].is_object());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in ["Body", "GenerationRequest", "ErrorBody", "PngInfoBody"] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert!(schemas["GenerationRequest"]["properties"]["prompt"].is_object());
    // Every $ref points at a schema the document has.
    let text = doc.to_string();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }
    // Every GET without parameters answers (no route is documented but missing), and the
    // events route and the others with ids are there too.
    let mut checked = 0;
    for (path, methods) in paths {
        if methods.get("get").is_some() && !path.contains('{') {
            let reply = get(addr, path);
            assert_eq!(reply.status, 200, "GET {path}");
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} GET routes");
    for path in [
        "/api/v1/jobs/{id}/events",
        "/api/v1/jobs/{id}/cancel",
        "/sdapi/v1/progress",
        "/docs",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|m| m.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "operation ids are unique");
}

#[test]
fn the_docs_page_is_served_without_outside_assets() {
    let server = TestServer::start(tiny_config());
    let reply = get(server.addr, "/docs");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(reply.body).unwrap();
    assert!(page.contains("openapi.json"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside URL"
    );
}

#[test]
fn the_web_page_is_served_with_its_form_and_no_outside_assets() {
    let server = TestServer::start(tiny_config());
    let reply = get(server.addr, "/");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(reply.body).unwrap();
    for needle in [
        "id=\"prompt\"",
        "id=\"sampler\"",
        "id=\"maskCanvas\"",
        "id=\"interrupt\"",
        "id=\"gallery\"",
        "/api/v1/jobs",
        "/sdapi/v1/samplers",
    ] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("<script src"),
        "no outside or separate assets"
    );
}

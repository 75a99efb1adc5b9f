//! The OpenAPI 3 document of the Admin API, built from the endpoint table and the entity
//! schemas.

use serde_json::{Map, Value, json};

use super::endpoints;

/// The document served at `GET /openapi.json`.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for endpoint in endpoints() {
        let mut item = Map::new();
        for method in endpoint.methods {
            item.insert(
                method.as_str().to_ascii_lowercase(),
                json!({"responses": {}}),
            );
        }
        paths.insert(endpoint.path.clone(), Value::Object(item));
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Gatehouse Admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}

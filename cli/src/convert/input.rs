//! The input: a YAML stream of Kubernetes objects, and lists of them (`kind: List`, or a typed list
//! such as `AuthorizationPolicyList` as the API server returns it), read into one value per object.

use serde_json::{Map, Value};

use super::{ConvertError, ObjectRef};

/// One object of the input and where it was.
#[derive(Debug)]
pub(super) struct Item {
    /// Where: document and list position, and the object's kind, namespace and name as written.
    pub(super) at: ObjectRef,
    /// The object, whatever it is (not necessarily a mapping).
    pub(super) value: Value,
}

/// Reads the stream. Only unreadable YAML is an error; anything else is an item for the caller to
/// judge. Empty documents (a trailing `---`, a file of comments) are skipped.
pub(super) fn items(input: &str) -> Result<Vec<Item>, ConvertError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| {
        let location = e.location();
        ConvertError {
            line: location
                .as_ref()
                .and_then(|l| usize::try_from(l.line()).ok()),
            column: location
                .as_ref()
                .and_then(|l| usize::try_from(l.column()).ok()),
            message: e.to_string(),
        }
    })?;
    let mut out = Vec::new();
    for (i, value) in documents.into_iter().enumerate() {
        let document = i + 1;
        match list_items(&value) {
            Some((api_version, kind, items)) => {
                for (j, item) in items.iter().enumerate() {
                    let value = typed_item(item.clone(), api_version, kind);
                    let at = identify(document, Some(j), &value);
                    out.push(Item { at, value });
                }
            }
            None if value.is_null() => {}
            None => {
                let at = identify(document, None, &value);
                out.push(Item { at, value });
            }
        }
    }
    Ok(out)
}

/// The items of a list object, with the list's `apiVersion` and item kind (`Foo` for `FooList`).
fn list_items(value: &Value) -> Option<(Option<&str>, Option<&str>, &[Value])> {
    let kind = value.get("kind")?.as_str()?;
    let item_kind = kind.strip_suffix("List")?;
    let items = value.get("items")?.as_array()?;
    let item_kind = (!item_kind.is_empty()).then_some(item_kind);
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    Some((api_version, item_kind, items))
}

/// The items of a typed list may leave out their `apiVersion` and `kind`: they are the list's.
fn typed_item(mut item: Value, api_version: Option<&str>, kind: Option<&str>) -> Value {
    if let (Some(object), Some(api_version), Some(kind)) = (item.as_object_mut(), api_version, kind)
    {
        let mut fill = |key: &str, value: &str| {
            if !object.contains_key(key) {
                object.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        };
        fill("apiVersion", api_version);
        fill("kind", kind);
    }
    item
}

/// Where an item is and what it says it is, as far as that can be read.
fn identify(document: usize, item: Option<usize>, value: &Value) -> ObjectRef {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let metadata = value.get("metadata").and_then(Value::as_object);
    let meta = |key: &str| text(metadata.and_then(|m: &Map<String, Value>| m.get(key)));
    ObjectRef {
        document,
        item,
        kind: text(value.get("kind")),
        namespace: meta("namespace"),
        name: meta("name"),
    }
}

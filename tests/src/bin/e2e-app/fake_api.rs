//! `e2e-app fake-api`: the stand-in API server ([`veil_e2e::apiserver`]) serving the objects the
//! test writes as JSON files under `<dir>/<resource>/`. The directory is polled, and every change
//! becomes a watch event, as the real API server would send it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use veil_e2e::apiserver::{Api, ApiStore, RESOURCES, not_found, serve as serve_api};

/// The files as last read: (resource, file name) → content.
type Seen = BTreeMap<(&'static str, String), Value>;

/// Brings the store in line with the files.
fn sync(dir: &Path, seen: &mut Seen, store: &mut ApiStore) {
    for &(_, resource, _) in RESOURCES {
        let mut present = Vec::new();
        let files = std::fs::read_dir(dir.join(resource))
            .into_iter()
            .flatten()
            .flatten();
        for file in files {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let Some(content) = std::fs::read(file.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                continue; // Half-written or invalid: the test writes atomically, skip.
            };
            present.push(name.clone());
            let key = (resource, name);
            if seen.get(&key) == Some(&content) {
                continue;
            }
            store.put(resource, &key.1, content.clone(), true);
            seen.insert(key, content);
        }
        let gone: Vec<(&'static str, String)> = seen
            .keys()
            .filter(|(r, name)| *r == resource && !present.contains(name))
            .cloned()
            .collect();
        for key in gone {
            seen.remove(&key);
            store.delete(resource, &key.1);
        }
    }
}

/// Serves until killed.
pub(crate) async fn serve(listen: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    let api = Api::default();
    {
        let api = api.clone();
        tokio::spawn(async move {
            let mut seen = Seen::new();
            loop {
                api.change(|s| sync(&dir, &mut seen, s));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let listener = TcpListener::bind(listen).await?;
    println!("fake API server listening on {listen}");
    serve_api(listener, api, |req| {
        println!("{} {} (not served)", req.method, req.uri);
        not_found()
    })
    .await?;
    Ok(())
}

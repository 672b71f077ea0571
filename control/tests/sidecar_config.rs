//! The config the control plane renders is one that the sidecar's config
//! crate (`meshgate-config`) accepts.

use std::path::Path;
use std::time::SystemTime;

use meshgate_control::{Instance, render_sidecar_config};

/// The seed demo, as it ships: every service static.
const SEED: &str = include_str!("../../config/examples/seed.toml");

fn instance(address: &str, version: &str) -> Instance {
    Instance {
        service: "product-catalog".into(),
        address: address.parse().expect("address"),
        labels: [("version".to_owned(), version.to_owned())].into(),
        identity: "spiffe://seed.meshgate.local/service/product-catalog".into(),
        joined_at: SystemTime::now(),
    }
}

fn accepted(rendered: &str) {
    if let Err(diagnostics) = meshgate_config::load_str(rendered, "<rendered>", Path::new(".")) {
        panic!("the sidecar refuses the rendered config:\n{diagnostics}\n{rendered}");
    }
}

#[test]
fn the_seed_renders_to_a_valid_sidecar_config() {
    let rendered = render_sidecar_config(SEED, &[]).expect("renders");
    accepted(&rendered);
}

#[test]
fn a_mesh_service_renders_to_a_valid_sidecar_config() {
    // The seed's services register through their sidecars.
    assert!(SEED.contains("discovery = \"mesh\""));
    let source = SEED;
    let instances = [
        instance("127.0.0.1:9101", "v1"),
        instance("127.0.0.1:9104", "v2"),
    ];
    let rendered = render_sidecar_config(source, &instances).expect("renders");
    assert!(
        rendered.contains("address = \"127.0.0.1:9104\""),
        "{rendered}"
    );
    accepted(&rendered);
}

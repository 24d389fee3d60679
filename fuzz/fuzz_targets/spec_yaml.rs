//! User specs as YAML, into every document kind the node and the API parse.
#![no_main]

use falak_core::spec::from_yaml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = falak_core::capsule::CapsuleDocument::parse(text);
    let _ = falak_core::function::FunctionDocument::parse(text);
    let _ = from_yaml::<falak_api::job::JobSubmission>(text);
    let _ = from_yaml::<falak_api::service::ServiceSubmission>(text);
    let _ = from_yaml::<falak_api::workload::WorkloadRequest>(text);
    let _ = from_yaml::<falak_api::function::InvocationSubmission>(text);
    let _ = from_yaml::<falak_node::config::NodeConfigDocument>(text);
    let _ = falak_node::cluster::ClusterDocument::parse(text);
    let _ = from_yaml::<serde_json::Value>(text);
});

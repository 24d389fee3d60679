//! User specs as JSON (the API's `application/json` bodies), into every document kind.
#![no_main]

use falak_core::spec::from_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = from_json::<falak_core::capsule::CapsuleDocument>(data);
    let _ = from_json::<falak_core::function::FunctionDocument>(data);
    let _ = from_json::<falak_api::job::JobSubmission>(data);
    let _ = from_json::<falak_api::service::ServiceSubmission>(data);
    let _ = from_json::<falak_api::workload::WorkloadRequest>(data);
    let _ = from_json::<falak_api::function::InvocationSubmission>(data);
    let _ = from_json::<falak_node::config::NodeConfigDocument>(data);
    let _ = from_json::<serde_json::Value>(data);
});

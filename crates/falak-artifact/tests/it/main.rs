//! The integration tests of `falak-artifact`: the store on disk, bundles, and fetching between
//! nodes over the in-memory network.

mod bundle;
mod fetch;
mod store;
mod tamper;

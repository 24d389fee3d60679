//! Content-addressed artifacts (BLAKE3): the on-disk store, code bundles, and fetching from peers.

//! The function host against real processes: python (zygote and cold), http programs and exec
//! commands, each test with its own bundle in a temporary dir. Needs `python3` with the
//! `venv` module (Debian: python3-venv) on PATH.

mod exec;
mod http;
mod prepare;
mod python;
mod sandbox;
mod support;

/// The node holds these in `Arc`s across tasks and spawns their futures.
#[test]
fn the_api_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<falak_function::Prepared>();
    send_sync::<falak_function::Zygote>();
    send_sync::<falak_function::Instance>();
    send_sync::<falak_function::BoxBody>();
}

/// Compiled, never called: the futures the node spawns must be `Send`.
fn _the_futures_are_send(
    prepared: &falak_function::Prepared,
    zygote: &falak_function::Zygote,
    instance: &falak_function::Instance,
    request: ::http::Request<falak_function::BoxBody>,
) {
    fn send<T: Send>(_: T) {}
    send(falak_function::prepare(prepared.spec().clone(), std::path::Path::new("/")));
    send(falak_function::spawn(prepared, 1));
    send(falak_function::Zygote::start(prepared));
    send(zygote.fork(1));
    send(zygote.stop());
    send(instance.send(request));
    send(instance.health());
    send(instance.exited());
    send(instance.stop(std::time::Duration::ZERO));
}

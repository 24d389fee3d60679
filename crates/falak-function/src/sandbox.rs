//! The function host's side of the workload sandbox ([`falak_exec::workload`]): what each of
//! its process trees needs, and the network a runtime's processes get.
//!
//! **Files.** A deployment's work dir (the node's, `0711`) holds `host.py` (`0644`) and `run/`,
//! the only directory instances may write: it belongs to the instance user, mode `0700`, and
//! holds the Unix sockets (`z<N>.ctl`, `i<N>.sock`) and one private temporary directory per
//! process tree (`z<N>.tmp`, `i<N>.tmp`), its `TMPDIR` and `HOME`. The node still connects to
//! the sockets. The bundle, the virtualenv and the interpreter are only read, bound read-only
//! into each process's mount namespace.
//!
//! **Cgroups.** One per process tree under the function host's scope, named
//! `fn-<deployment>-<what>-<hash>` ([`falak_exec::workload::cgroup_name`]; `what` is `z3`, `i7`,
//! `i7-c2` for an `exec` command), with the deployment's per-instance limits; the enclosure
//! ([`falak_exec::workload::Enclosure`]) removes it (killing what is left in it) when the process is stopped or dropped.

use falak_core::function::Runtime;
use falak_exec::workload::{Made, Plan, WorkloadSandbox, cgroup_name};
use falak_sandbox::{Namespaces, Network};

use crate::error::StartError;
use crate::prepare::Prepared;

/// The network `runtime`'s processes run in: a private namespace with only loopback (the
/// node's API, RPC and gossip ports are out of reach), except for `http`, whose instances may
/// serve on `127.0.0.1:$PORT` instead of the socket: the node must reach that port, so they
/// share the node's network. Without namespaces, everything does.
pub fn network(sandbox: &WorkloadSandbox, runtime: Runtime) -> Network {
    match runtime {
        // A container's is its spec's, given to the runtime (`crate::container`).
        Runtime::Http | Runtime::Container => Network::Host,
        Runtime::Python | Runtime::Exec if sandbox.namespaces != Namespaces::Unavailable => Network::None,
        Runtime::Python | Runtime::Exec => Network::Host,
    }
}

/// What [`enclose`] should make for a process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    pub tmp: bool,
    pub cgroup: bool,
    /// A Landlock ruleset and namespaces: for a process about to be launched (a fork inherits
    /// its zygote's).
    pub launch: bool,
}

impl Needs {
    /// A zygote, a cold instance: everything.
    pub const LAUNCH: Needs = Needs { tmp: true, cgroup: true, launch: true };
    /// An instance forked by the zygote: its tmp dir and cgroup.
    pub const FORK: Needs = Needs { tmp: true, cgroup: true, launch: false };
    /// An `exec` instance: the tmp dir its commands share.
    pub const TMP: Needs = Needs { tmp: true, cgroup: false, launch: false };
    /// One `exec` command: its own cgroup, ruleset and namespaces.
    pub const COMMAND: Needs = Needs { tmp: false, cgroup: true, launch: true };
}

/// Make what process tree `name` (`z3`, `i7`, `i7-c2`) of `prepared` needs before it starts;
/// `what` names it in errors ("the zygote", "instance 7").
pub(crate) async fn enclose(prepared: &Prepared, what: &str, name: &str, needs: Needs) -> Result<Made, StartError> {
    let spec = prepared.spec();
    // A launch enters its namespaces and starts in the bundle, entered through them.
    let isolation = needs.launch.then(|| {
        spec.sandbox
            .isolation()
            .network(network(&spec.sandbox, spec.runtime))
            .inner_user(spec.sandbox.inner_user)
            .view(prepared.view())
            .chdir(&spec.bundle_dir)
    });
    let plan = Plan {
        sandbox: spec.sandbox.clone(),
        limits: spec.limits,
        run_dir: prepared.run_dir(),
        cgroup_name: needs.cgroup.then(|| cgroup_name(&format!("fn-{}", spec.deployment), name, &spec.work_dir)),
        tmp: needs.tmp.then(|| prepared.tmp_dir(name)),
        isolation,
        readable: prepared.readable(),
    };
    let made = tokio::task::spawn_blocking(move || plan.make()).await;
    let failed = |step: String, source| StartError::Sandbox {
        deployment: spec.deployment.clone(),
        what: what.to_owned(),
        step,
        source,
    };
    match made {
        Ok(Ok(made)) => Ok(made),
        Ok(Err((step, source))) => Err(failed(step, source)),
        Err(e) => Err(failed("preparing".to_owned(), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_alone_shares_the_node_s_network() {
        let mut sandbox = WorkloadSandbox::unconfined();
        sandbox.namespaces = Namespaces::Privileged;
        assert_eq!(network(&sandbox, Runtime::Python), Network::None);
        assert_eq!(network(&sandbox, Runtime::Exec), Network::None);
        assert_eq!(network(&sandbox, Runtime::Http), Network::Host);
        sandbox.namespaces = Namespaces::Unavailable;
        assert_eq!(network(&sandbox, Runtime::Python), Network::Host);
    }

    #[test]
    fn function_cgroups_are_named_after_the_deployment_and_the_process() {
        let name = cgroup_name("fn-greet@3", "i7", std::path::Path::new("/a"));
        assert!(name.starts_with("fn-greet_3-i7-"), "{name}");
    }
}

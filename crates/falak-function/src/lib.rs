//! The function host: runtime hosts, zygote snapshots, instances and the instance pool.

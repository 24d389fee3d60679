//! Unpacking image layers into a root filesystem (being written).

//! hyperpod-init: PID 1 of the guest.

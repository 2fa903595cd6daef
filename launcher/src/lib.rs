//! hyperlaunch: boots a `.pod` in a minimal KVM micro-VM.

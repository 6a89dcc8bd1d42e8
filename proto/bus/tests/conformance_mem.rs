//! Runs every conformance case against the in-process bus.

orchestra_bus::conformance_tests!(orchestra_bus::MemBus::new());

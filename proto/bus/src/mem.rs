//! The in-process bus. (being written: placeholder so the workspace compiles)

/// In-process implementation of [`crate::Bus`].
#[derive(Debug, Default)]
pub struct MemBus {}

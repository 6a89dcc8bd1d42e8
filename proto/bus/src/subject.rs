//! Subject syntax and matching (to be written).

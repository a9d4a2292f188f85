//! Search parameter definitions and the values a resource yields for them.

mod index;

pub use index::{IndexEntry, IndexValue};

//! Integration tests of falak-image.

mod import;
mod unpack;

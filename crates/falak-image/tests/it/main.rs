//! Integration tests of falak-image.
